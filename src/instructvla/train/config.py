"""`TrainConfig`: every knob of `instructvla train`, validated on construction (errors name the field)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from instructvla.data.mixture import MixtureConfig

STAGES = (0, 1, 2)
PROGRESS_MODES = ("auto", "always", "never")
# YAML-style spellings draccus may hand over (`--progress=off` arrives as the string "False").
_PROGRESS_ALIASES = {"on": "always", "true": "always", "yes": "always", "off": "never", "false": "never", "no": "never"}
DEVICES = ("auto", "cpu", "cuda")
STRATEGY_NAMES = ("auto", "none", "ddp", "fsdp")
LR_SCHEDULES = ("constant", "cosine")

# Fields that may change between a run and its resumption (everything else must match the checkpoint).
RESUMABLE_CHANGES = frozenset(
    {"steps", "resume", "save_every", "keep_last", "log_every", "progress", "time_limit_s", "num_workers", "device",
     "threads", "prefetch"}
)


@dataclass
class TrainConfig:
    """Train one stage of InstructVLA (method.md §4). Launch with `instructvla train ...`, or for N processes
    `torchrun --standalone --nproc_per_node N -m instructvla.train.trainer ...` (gloo on CPU, nccl on CUDA).

    Stage 0: pretrain the tiny VLM on the multimodal corpus (LM loss; skipped when `init` is a real VLM).
    Stage 1 (Expert): action LoRA + latent query rows + whole action expert; robot data.
    Stage 2 (Generalist): both LoRA experts + scale head + query rows; action expert frozen; robot data with the
    VLA-IT prompt mixture, plus one multimodal LM step every `mm_every` iterations.
    """

    stage: int = 1  # 0 | 1 | 2
    dataset: str | None = None  # LeRobot v3 dataset folder (robot data; stages 1 and 2)
    extra_datasets: list[str] = field(default_factory=list)  # more LeRobot folders read with `dataset` (e.g. DAgger
    #                                                          corrections), normalised with the first one's stats
    multimodal: str | None = None  # multimodal corpus folder (stage 0, stage-2 co-training)
    init: str | None = None  # start from: a VLM folder (stage 0/1), a stage-1 run's model folder (stage 2, or stage 1
    #                          to continue training that Expert, e.g. on DAgger corrections)
    preset: str = "tiny"  # model preset when building from scratch: tiny | small | base
    out: str = "runs/train"  # run folder: checkpoints/, metrics.jsonl, model/ (the final save_pretrained folder)
    steps: int = 1000  # training iterations (a stage-2 iteration = robot step + multimodal step)
    batch_size: int = 8  # robot samples per process per iteration (stage 0: multimodal samples)
    mm_batch_size: int = 2  # stage 2: multimodal samples per process per multimodal step
    mm_every: int = 1  # stage 2: one multimodal step every N iterations (0 = none)
    lr: float = 5e-5  # AdamW peak learning rate
    lr_schedule: str = "constant"  # constant (method) | cosine: decay to lr_final_ratio * lr over the run's budget
    #                                (steps or time_limit_s, whichever runs out first)
    lr_final_ratio: float = 0.1  # cosine: the learning rate at the end of the budget, as a share of lr
    weight_decay: float = 0.0  # never applied to embedding rows
    grad_clip: float = 1.0  # max global gradient norm (0 = off)
    bf16: bool = False  # bf16 autocast (CUDA; off on CPU by default)
    device: str = "auto"  # auto | cpu | cuda
    strategy: str = "auto"  # auto (DDP when several processes) | none | ddp | fsdp (FSDP2 on the backbone blocks)
    save_every: int = 500  # checkpoint every N iterations (0 = only at the end)
    keep_last: int = 3  # checkpoints kept (0 = all)
    resume: bool = False  # continue from the newest checkpoint in `out` (fresh start if there is none)
    seed: int = 0
    num_workers: int = 0  # DataLoader worker processes per rank
    prefetch: int = 0  # batches collated ahead by a background thread (0 = in the loop); slower on 2 cores
    threads: int = 0  # torch compute threads per rank (0 = torch's default); with num_workers=1 on 2 cores, 1 is faster
    chunk_size: int = 16  # action chunk length
    use_state: bool = False  # proprioceptive state token ("(S.)" models)
    image_size: int = 224  # side of the frames fed to the model (stage 0/1; stage 2 takes the stage-1 model's)
    num_queries: int = 64  # latent action query tokens (stage 0/1; stage 2 takes the stage-1 model's)
    augment: bool = True  # image augmentation on robot frames
    noise_repeats: int = 1  # flow-matching (noise, time) draws per robot sample sharing one encoded prefix (1 = method)
    keypoints: bool = False  # train with the dataset's observation.keypoints labels (stage 1 adds a keypoint readout)
    keypoint_loss_weight: float = 1.0  # stage 1: weight of the keypoint L1 loss next to the flow-matching loss
    keypoint_heatmap_weight: float = 0.0  # stage 1: weight of the heat maps' cross-entropy at the labels (0 = off)
    object_keypoint_weight: float = 0.0  # stage 1: weight of dense every-object grounding labels (0 = off; needs the
    #                                      dataset's observation.object_keypoints)
    hide_held_target: bool = True  # no target keypoint label once the gripper has closed (the object is in hand)
    keypoint_teacher_forcing: float = 0.0  # stage 1: share of samples whose keypoint tokens use the labels
    keypoint_action_bias: bool = False  # stage 1: keypoints (+ state) also bias every action token directly
    cumulative_loss_weight: float = 0.0  # stage 1: weight of the flow loss on the chunk's running sums of delta
    #                                      errors (ActionExpertConfig.cumulative_loss_weight; 0 = the method)
    flow_noise_std: float = 1.0  # stage 1: std of the flow's noise prior (ActionExpertConfig.flow_noise_std; 1 = method)
    flow_time_alpha: float = 1.5  # stage 1: training times t = 0.999 (1 - Beta(alpha, 1)) (1.5 = method, 1 = uniform)
    vision_tower: str = "dinov2"  # stage 1: action-expert vision tower, "dinov2" (method) | "conv" (FiLM CNN reading
    #                                the frames at image_size; learns to localise sooner when trained from scratch)
    cameras: list[str] = field(default_factory=list)  # views to train on, primary first ("primary", "wrist" or full
    #                                                    feature keys); empty = every camera of the dataset
    mixture: MixtureConfig = field(default_factory=MixtureConfig)  # robot-prompt ratios (stage 2; motion share: 1, 2)
    no_moe: bool = False  # ablation: one LoRA trained on everything (no expert split, no scale head)
    log_every: int = 10  # metrics line every N iterations
    progress: str = "auto"  # rich progress bar on rank 0: auto (only on a TTY) | always | never (on/off work too)
    time_limit_s: float | None = None  # stop cleanly (checkpoint + final model) after this many seconds
    ema: float | None = None  # EMA decay of the trainable weights (e.g. 0.999); the final model gets EMA weights

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.stage in (1, 2) and not self.dataset:
            raise ValueError(f"dataset: stage {self.stage} trains on robot data, give --dataset=<LeRobot folder>")
        if self.stage == 0 and not self.multimodal:
            raise ValueError("multimodal: stage 0 pretrains on the multimodal corpus, give --multimodal=<folder>")
        if self.stage == 2 and self.mm_every > 0 and not self.multimodal:
            raise ValueError("multimodal: stage 2 co-trains on multimodal data; give --multimodal or --mm_every=0")
        if self.stage == 2 and not self.init:
            raise ValueError("init: stage 2 starts from a stage-1 model folder, give --init=<stage-1 run>/model")
        for name in ("steps", "batch_size", "mm_batch_size", "log_every", "image_size", "num_queries", "noise_repeats"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("mm_every", "save_every", "keep_last", "num_workers", "chunk_size", "threads", "prefetch"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not (math.isfinite(self.grad_clip) and self.grad_clip >= 0):
            raise ValueError(f"grad_clip must be >= 0 (0 = off), got {self.grad_clip!r}")
        self.progress = _PROGRESS_ALIASES.get(str(self.progress).lower(), str(self.progress))
        if self.progress not in PROGRESS_MODES:
            raise ValueError(f"progress must be one of {PROGRESS_MODES}, got {self.progress!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if not 0.0 <= self.lr_final_ratio <= 1.0:
            raise ValueError(f"lr_final_ratio must be in [0, 1], got {self.lr_final_ratio!r}")
        for name in ("keypoint_loss_weight", "keypoint_heatmap_weight", "object_keypoint_weight",
                     "cumulative_loss_weight"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if not (math.isfinite(self.flow_noise_std) and self.flow_noise_std > 0):
            raise ValueError(f"flow_noise_std must be a finite number > 0, got {self.flow_noise_std}")
        if not (math.isfinite(self.flow_time_alpha) and self.flow_time_alpha > 0):
            raise ValueError(f"flow_time_alpha must be a finite number > 0, got {self.flow_time_alpha}")
        if not 0.0 <= self.keypoint_teacher_forcing <= 1.0:
            raise ValueError(f"keypoint_teacher_forcing must be in [0, 1], got {self.keypoint_teacher_forcing}")
        if (self.keypoint_teacher_forcing > 0 or self.keypoint_action_bias or self.keypoint_heatmap_weight > 0
                or self.object_keypoint_weight > 0) and not self.keypoints:
            raise ValueError("keypoint_teacher_forcing / keypoint_action_bias / keypoint_heatmap_weight / "
                             "object_keypoint_weight need keypoints=true (labelled data)")
        if self.vision_tower not in ("dinov2", "conv"):
            raise ValueError(f"vision_tower must be 'dinov2' or 'conv', got {self.vision_tower!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.strategy not in STRATEGY_NAMES:
            raise ValueError(f"strategy must be one of {STRATEGY_NAMES}, got {self.strategy!r}")
        if self.time_limit_s is not None and not self.time_limit_s > 0:
            raise ValueError(f"time_limit_s must be > 0 seconds, got {self.time_limit_s!r}")
        if self.ema is not None and not 0.0 < self.ema < 1.0:
            raise ValueError(f"ema must be a decay in (0, 1), got {self.ema!r}")
        if self.no_moe and self.stage != 2:
            raise ValueError(f"no_moe is a stage-2 ablation, but stage is {self.stage}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """The config a run saved (`train_config.json`); unknown keys are an error naming them."""
        from dataclasses import fields

        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"TrainConfig: unknown key(s) {unknown}")
        mixture = d.get("mixture")
        return cls(**{**d, **({"mixture": MixtureConfig(**mixture)} if isinstance(mixture, dict) else {})})


def check_resume_compatible(saved: dict, current: TrainConfig) -> None:
    """Raise if a field that shapes the run differs between a checkpoint's config and this one."""
    now = current.to_dict()
    for key, old in saved.items():
        if key in RESUMABLE_CHANGES or key not in now:
            continue
        if now[key] != old:
            raise ValueError(
                f"--resume: {key} was {old!r} in the checkpoint but is {now[key]!r} now; "
                "use the same value (or a new --out for a new run)"
            )
