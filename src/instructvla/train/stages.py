"""What each training stage trains, on which data, starting from what (method.md §4; design.md decision 2).

Stage 0: the whole tiny VLM (vision tower + projector + LLM, every embedding row), LM loss on the multimodal corpus.
Stage 1 (Expert): action LoRA + latent query rows + the whole action expert; robot data, action prompts (20% with
         the language-motion variant).
Stage 2 (Generalist): both LoRA experts + scale head + query rows; action expert frozen; robot data with the VLA-IT
         mixture, plus LM-only multimodal steps. `no_moe`: one LoRA (the stage-1 one) trained on the same data.
`build_parts` turns a `TrainConfig` into the model, datasets and callbacks the trainer loop needs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from instructvla.train.config import TrainConfig
from instructvla.train.distributed import DistInfo
from instructvla.train.trainer import TrainParts

logger = logging.getLogger(__name__)

STAGE_NAMES = {0: "VLM pretraining", 1: "Expert (action pretraining)", 2: "Generalist (VLA instruction tuning)"}


# ------------------------------------------------------------------------------------------ trainable sets
def paper_trainable_names(model: nn.Module, stage: int, no_moe: bool = False) -> set[str]:
    """The trainable parameter names method.md §4 prescribes, derived from the model's parts (not its own lists).

    stage 0: every VLM parameter; stage 1: LoRA + embedding matrices (query rows) + action expert (less the
    parameters no forward uses, which stay frozen);
    stage 2: every LoRA expert + scale head + embedding matrices; no_moe: LoRA + embedding matrices.
    (The embedding matrices are trainable tensors whose gradient is masked to the query rows outside stage 0.)
    """
    if stage not in (0, 1, 2):
        raise ValueError(f"stage must be 0, 1 or 2, got {stage!r}")
    ids: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=True):
        ids.setdefault(id(p), name)

    def names(params) -> set[str]:
        return {ids[id(p)] for p in params if id(p) in ids}

    if stage == 0:
        return names(model.backbone.parameters())
    rows = set(model.embedding_param_names())
    lora = names(model.molora.lora_parameters())
    if stage == 1:
        ae = model.action_expert
        unused = {id(p) for n, p in ae.named_parameters() if n in set(ae.unused_parameter_names())}
        return lora | rows | names(p for p in ae.parameters() if id(p) not in unused)
    if no_moe:
        return lora | rows
    return lora | names(model.molora.gate_parameters()) | rows


def configure_trainable(model: nn.Module, stage: int, no_moe: bool = False) -> list[str]:
    """Set requires_grad for the stage and check it against `paper_trainable_names`; returns the trainable names."""
    if no_moe:
        if stage != 2:
            raise ValueError("no_moe is a stage-2 ablation")
        if model.config.stage != 1:
            raise ValueError("no_moe trains the single stage-1 LoRA: build the model from a stage-1 folder")
        keep = paper_trainable_names(model, 2, no_moe=True)
        for name, p in model.named_parameters(remove_duplicate=True):
            p.requires_grad_(name in keep)
        model._restrict_rows = True
        names = sorted(keep)
    else:
        names = model.set_trainable(stage)
    expected = paper_trainable_names(model, stage, no_moe)
    if set(names) != expected:
        extra, missing = sorted(set(names) - expected)[:5], sorted(expected - set(names))[:5]
        raise RuntimeError(f"stage {stage}: trainable set differs from method.md: extra {extra}, missing {missing}")
    return names


# ------------------------------------------------------------------------------------------ model construction
def _saved_config(path: Path) -> dict[str, Any] | None:
    """The config.json of an InstructVLA checkpoint folder (written by save_pretrained); None for anything else."""
    from instructvla.model.vla import CONFIG_FILE

    file = path / CONFIG_FILE
    if not file.is_file():
        return None
    data = json.loads(file.read_text())
    return data if "_format_version" in data else None


def _is_instructvla_dir(path: Path) -> bool:
    return _saved_config(path) is not None


def _action_overrides(cfg: TrainConfig, num_views: int, num_keypoints: int, num_objects: int = 0) -> dict[str, Any]:
    out = {"use_state": cfg.use_state, "chunk_size": cfg.chunk_size, "num_views": num_views,
           "noise_repeats": cfg.noise_repeats, "keypoints": num_keypoints,
           "cumulative_loss_weight": cfg.cumulative_loss_weight, "flow_noise_std": cfg.flow_noise_std,
           "flow_time_alpha": cfg.flow_time_alpha}
    if num_keypoints:
        out |= {"keypoint_teacher_forcing": cfg.keypoint_teacher_forcing, "keypoint_loss_weight": cfg.keypoint_loss_weight,
                "keypoint_action_bias": cfg.keypoint_action_bias, "keypoint_heatmap_weight": cfg.keypoint_heatmap_weight,
                "object_keypoints": num_objects, "object_keypoint_weight": cfg.object_keypoint_weight}
    if cfg.vision_tower == "conv":  # the CNN reads the frames at their own size
        out |= {"vision_tower": "conv", "image_size": cfg.image_size}
    return out


def build_model(cfg: TrainConfig, num_views: int = 1, num_keypoints: int = 0, num_objects: int = 0):
    """The model a stage starts from (CPU, float32), with its trainable set configured.

    stage 0: preset (or `init` VLM/InstructVLA folder) with the whole VLM trainable.
    stage 1: the VLM of `init` (an HF VLM folder or a stage-0 InstructVLA folder; preset if None) + a fresh action
             LoRA and action expert; or, when `init` is a stage-1 model, that model itself (continued training).
    stage 2: `to_stage2(init)` (a stage-1 folder); with no_moe the stage-1 model itself.
    num_keypoints: stage 1: K > 0 gives the fresh action expert a keypoint readout (labels from the dataset).
    num_objects: stage 1: M > 0 gives that readout M object queries (dense labels from the dataset).
    """
    from instructvla.model.backbone import Backbone
    from instructvla.model.config import InstructVLAConfig
    from instructvla.model.vla import _EXPERT_FOR_PRESET, InstructVLA

    overrides = _action_overrides(cfg, num_views, num_keypoints, num_objects)
    if continues_expert(cfg):
        model = InstructVLA.from_pretrained(cfg.init)
        check_model_matches(model, cfg, num_views)
        model.action_expert.cfg = dataclasses.replace(model.action_expert.cfg, noise_repeats=cfg.noise_repeats)
    elif cfg.stage in (0, 1):
        backbone, name = None, cfg.preset
        if cfg.init:
            init = Path(cfg.init)
            if not init.is_dir():
                raise FileNotFoundError(f"init: {init} is not a folder")
            backbone = (InstructVLA.from_pretrained(init).release_backbone() if _is_instructvla_dir(init)
                        else Backbone.from_pretrained(init))
            name = str(init)
        config = InstructVLAConfig.from_dict({
            "backbone": name, "stage": 1, "seed": cfg.seed, "image_size": cfg.image_size,
            "num_queries": cfg.num_queries,
            "action_expert": _EXPERT_FOR_PRESET.get(cfg.preset, "tiny"), "action_expert_overrides": overrides,
        })
        model = InstructVLA(config, backbone=backbone)
    else:
        src = InstructVLA.from_pretrained(cfg.init)
        if src.config.stage != 1:
            raise ValueError(f"init: stage 2 starts from a stage-1 model, {cfg.init} is stage {src.config.stage}")
        model = src if cfg.no_moe else InstructVLA.to_stage2(src)
        check_model_matches(model, cfg, num_views)
        # a training knob, this run's value; replace() re-validates it against the model (e.g. its attention kind)
        model.action_expert.cfg = dataclasses.replace(model.action_expert.cfg, noise_repeats=cfg.noise_repeats)
    model.config = dataclasses.replace(model.config, center_crop_area=eval_crop_area(cfg))
    configure_trainable(model, cfg.stage, cfg.no_moe)
    return model


def eval_crop_area(cfg: TrainConfig) -> float:
    """The centre crop (area kept) that matches this run's robot-frame augmentation: the random crops' area, or 1.0."""
    from instructvla.data.augment import AugmentConfig

    return AugmentConfig().crop_area if cfg.augment and cfg.stage > 0 else 1.0


def continues_expert(cfg: TrainConfig) -> bool:
    """Stage 1 from a trained stage-1 model: keep training that Expert (its LoRA, action expert and normalisation).
    A stage-0 folder has the same config stage but no normalisation stats: only its VLM is taken."""
    from instructvla.model.vla import NORM_FILE

    saved = _saved_config(Path(cfg.init)) if cfg.stage == 1 and cfg.init else None
    return saved is not None and saved.get("stage") == 1 and (Path(cfg.init) / NORM_FILE).is_file()


def check_model_matches(model, cfg: TrainConfig, num_views: int) -> None:
    """A model from `init` must agree with the run on chunk length, state use and camera count."""
    ae = model.action_expert.cfg
    for field_name, have, want in (("chunk_size", ae.chunk_size, cfg.chunk_size),
                                   ("use_state", ae.use_state, cfg.use_state), ("cameras", ae.num_views, num_views)):
        if have != want:
            raise ValueError(f"{field_name}: the model in {cfg.init} has {have!r}, this run has {want!r}")


# ------------------------------------------------------------------------------------------ data
def build_robot_dataset(cfg: TrainConfig, image_size: int, stats: dict | None):
    from instructvla.data.dataset import RobotDataset, RobotDatasets
    from instructvla.data.lerobot import KEYPOINTS_KEY, OBJECT_KEYPOINTS_KEY

    parts = []
    for root in [cfg.dataset, *cfg.extra_datasets]:  # the first one's stats normalise them all
        parts.append(RobotDataset(root, stage=cfg.stage, chunk_size=cfg.chunk_size, use_state=cfg.use_state,
                                  augment=cfg.augment, stats=stats, seed=cfg.seed, image_size=image_size,
                                  mixture=cfg.mixture, keypoints=cfg.keypoints, cameras=cfg.cameras or None,
                                  hide_held_target=cfg.hide_held_target,
                                  object_keypoints=cfg.object_keypoint_weight > 0))
        stats = parts[0].stats
    robot = parts[0] if len(parts) == 1 else RobotDatasets(parts)
    if cfg.keypoints and robot.num_keypoints == 0:
        raise ValueError(f"keypoints: {cfg.dataset} has no {KEYPOINTS_KEY!r} labels for its primary camera "
                         "(collect with keypoints=true, or train with --keypoints=false)")
    if cfg.object_keypoint_weight > 0 and robot.num_object_keypoints == 0:
        raise ValueError(f"object_keypoint_weight: {cfg.dataset} has no {OBJECT_KEYPOINTS_KEY!r} labels for its "
                         "primary camera (collect them with this version's collector, or set it to 0)")
    return robot


def build_multimodal_dataset(cfg: TrainConfig, image_size: int):
    from instructvla.data.multimodal import MultimodalDataset

    return MultimodalDataset(cfg.multimodal, split="train", image_size=image_size)


def check_dataset_matches(model, robot) -> None:
    """The dataset's action/state dims must match the model's action expert (a silent reshape would be wrong)."""
    ae = model.action_expert.cfg
    sample = robot[0]
    if sample["actions"].shape != (ae.chunk_size, ae.action_dim):
        raise ValueError(f"dataset action chunks have shape {tuple(sample['actions'].shape)}, the model expects "
                         f"({ae.chunk_size}, {ae.action_dim})")
    if ae.use_state and sample["state"].shape != (ae.state_dim,):
        raise ValueError(f"dataset state has shape {tuple(sample['state'].shape)}, the model expects ({ae.state_dim},)")
    if sample["images"].shape[0] != ae.num_views:
        raise ValueError(f"dataset samples have {sample['images'].shape[0]} camera views, the model expects "
                         f"{ae.num_views}")
    if robot.num_keypoints and robot.num_keypoints != ae.keypoints:
        raise ValueError(f"dataset has {robot.num_keypoints} keypoint labels per frame, the model's action expert "
                         f"reads {ae.keypoints} keypoints")
    if robot.num_object_keypoints and robot.num_object_keypoints != ae.object_keypoints:
        raise ValueError(f"dataset labels {robot.num_object_keypoints} objects per frame, the model's action expert "
                         f"has {ae.object_keypoints} object queries")


# ------------------------------------------------------------------------------------------ FSDP2 helpers
def _fsdp_row_mask(model) -> Any:
    """Under FSDP2 the model's own gradient hooks on the embedding matrices are gone (parameters are replaced by
    sharded ones); re-apply the query-row mask to the sharded gradients after each backward."""
    masks: dict[str, torch.Tensor] = {}

    def fix(wrapped: nn.Module) -> None:
        if not model._restrict_rows:
            return
        emb = set(model.embedding_param_names())
        for name, p in wrapped.named_parameters(remove_duplicate=True):
            g = p.grad
            if name not in emb or g is None:
                continue
            if name not in masks:
                full = torch.zeros(g.shape, dtype=g.dtype, device=g.device)
                full[model.query_ids] = 1
                if hasattr(g, "device_mesh"):
                    from torch.distributed.tensor import distribute_tensor

                    full = distribute_tensor(full, g.device_mesh, g.placements)
                masks[name] = full
            g.mul_(masks[name])

    return fix


def build_parts(cfg: TrainConfig, info: DistInfo) -> TrainParts:
    """Model, datasets, collate and export for `cfg.stage` (all ranks build the same model from the same seed)."""
    logger.info("stage %d: %s", cfg.stage, STAGE_NAMES[cfg.stage])
    image_size = cfg.image_size
    from_expert = cfg.stage == 2 or continues_expert(cfg)  # a trained stage-1 model fixes frame size and stats
    if from_expert:
        image_size = int((_saved_config(Path(cfg.init)) or {}).get("image_size", image_size))
    robot = None
    if cfg.stage in (1, 2):
        stats = None
        if from_expert:
            from instructvla.model.vla import NORM_FILE

            norm = Path(cfg.init) / NORM_FILE
            if not norm.is_file():
                raise ValueError(f"init: {cfg.init} has no {NORM_FILE}; a stage-1 model's normalisation is reused")
            stats = json.loads(norm.read_text())  # mismatched dims raise inside the dataset
        robot = build_robot_dataset(cfg, image_size, stats)
        num_views, num_keypoints, num_objects = len(robot.cameras), robot.num_keypoints, robot.num_object_keypoints
    else:
        num_views, num_keypoints, num_objects = 1, 0, 0
    model = build_model(cfg, num_views, num_keypoints, num_objects)
    if model.config.image_size != image_size:
        raise ValueError(f"model image_size {model.config.image_size} != data image_size {image_size}")
    mm = build_multimodal_dataset(cfg, image_size) if cfg.multimodal and (cfg.stage == 0 or cfg.mm_every) else None
    if robot is not None:
        check_dataset_matches(model, robot)
        model.norm_stats = robot.stats  # stage 2: the stage-1 stats the dataset was normalised with
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("trainable parameters: %.2fM of %.2fM", n / 1e6, sum(p.numel() for p in model.parameters()) / 1e6)

    processor = model.processor
    # Multimodal samples carry one view and no state; the model's processor accepts them (text samples need no
    # action-expert inputs), so the same processor batches both.
    mm_processor = processor if mm is not None else None
    strategy_fsdp = cfg.strategy == "fsdp"

    def export(m: nn.Module, folder: Path) -> None:
        m.save_pretrained(folder)

    def replica() -> nn.Module:
        rep = build_model(cfg, num_views, num_keypoints, num_objects)
        rep.norm_stats = model.norm_stats
        return rep

    return TrainParts(
        model=model,
        primary=mm if cfg.stage == 0 else robot,
        collate=mm_processor if cfg.stage == 0 else processor,
        param_groups=lambda m: [g for g in m.param_groups(cfg.weight_decay) if g["params"]],
        export=export,
        secondary=mm if cfg.stage == 2 else None,
        secondary_collate=mm_processor,
        shard_units=lambda m: list(m.backbone.decoder_layers),
        make_replica=replica if strategy_fsdp else None,
        after_backward=_fsdp_row_mask(model) if strategy_fsdp else None,
        epoch_indices=True,
    )
