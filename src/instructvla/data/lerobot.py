"""Read and write LeRobotDataset v3.0 (parquet + mp4 + meta json) with pyarrow and PyAV, no LeRobot import.

Layout written (all episodes of a dataset share one data file and one video file per camera):

    meta/info.json                                   codebase_version "v3.0", fps, features, totals, path templates
    meta/stats.json                                  per feature: min/max/mean/std/count/q01/q10/q50/q90/q99
    meta/tasks.parquet                               task (pandas index) -> task_index
    meta/episodes/chunk-000/file-000.parquet         one row per episode: tasks, length, file indices, from/to
    data/chunk-000/file-000.parquet                  one row per frame (one row group per episode)
    videos/<video key>/chunk-000/file-000.mp4        all episodes back to back; episode e starts at
                                                     videos/<key>/from_timestamp of its episodes row
    meta/vla_it.jsonl                                (ours) VLA-IT annotations keyed by (episode_index, frame_index)

The reader also reads datasets LeRobot wrote (several data/video files, image features stored as PNG structs).
Any inconsistency raises `DatasetError` naming the file and the problem.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from instructvla.jsonl import iter_jsonl

logger = logging.getLogger(__name__)

CODEBASE_VERSION = "v3.0"
DEFAULT_CHUNKS_SIZE = 1000
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
ANNOTATIONS_PATH = "meta/vla_it.jsonl"
DEFAULT_FEATURES: dict[str, dict] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
KEYPOINTS_KEY = "observation.keypoints"  # optional per-frame 2-D keypoints in the primary camera (sim/env.py)
# optional per-frame (u, v) of every known object in the primary camera (0 where absent) and whether each is in view
OBJECT_KEYPOINTS_KEY = "observation.object_keypoints"
OBJECT_VISIBLE_KEY = "observation.object_visible"
KEYPOINT_NAMES = ("target_u", "target_v", "destination_u", "destination_v", "gripper_u", "gripper_v")
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
REQUIRED_INFO_KEYS = ("codebase_version", "fps", "features", "total_episodes", "total_frames", "data_path")
REQUIRED_STATS = ("min", "max", "mean", "std", "count")
_NUMERIC = {"float32", "float64", "int64", "int32", "int16", "int8", "uint8", "bool"}
# codec name accepted in configs -> PyAV encoder. No hevc: the libx265 bundled with PyAV corrupted its heap and
# aborted the process on small frames here (a native crash, not an exception), so it is not offered for writing.
CODECS = {"h264": "libx264", "libx264": "libx264", "av1": "libsvtav1", "libsvtav1": "libsvtav1"}


class DatasetError(ValueError):
    """A dataset file is missing, corrupt, or inconsistent with the rest of the dataset."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def line_error(path: Path, lineno: int, problem: str) -> DatasetError:
    """`iter_jsonl` error factory: a DatasetError naming the file and the line."""
    return DatasetError(path, f"line {lineno}: {problem}")


# ----------------------------------------------------------------------------------------------------------- video


@dataclass
class VideoConfig:
    """How camera streams are encoded. h264 (libx264, preset veryfast, crf 18) is the default: on rendered tabletop
    frames it encoded 1.6x (128 px) to 1.6-2.8x (224 px) faster than AV1 (libsvtav1 preset 12, crf 30) on one
    thread, with a similar error (mean abs 2.4 vs 2.3 levels at 224 px) and smaller files; decoding speed was equal
    (benchmarks/collect_speed.py). "av1" is LeRobot's own default and is fully supported here.

    codec:   "h264" | "av1" (or the encoder names libx264 / libsvtav1).
    crf:     quality (lower = better); None = the encoder's default.
    g:       GOP size (keyframe every g frames; 2 keeps random access cheap, as LeRobot does).
    preset:  encoder speed preset ("veryfast" for x264, 0-13 for svt-av1); None = a fast default.
    """

    codec: str = "h264"
    crf: int | None = 18
    g: int = 2
    preset: str | int | None = None
    pix_fmt: str = "yuv420p"

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise ValueError(f"VideoConfig.codec: unknown codec {self.codec!r}; choose one of {sorted(CODECS)}")
        if self.g < 1:
            raise ValueError(f"VideoConfig.g must be >= 1, got {self.g}")
        if self.pix_fmt != "yuv420p":
            raise ValueError(f"VideoConfig.pix_fmt: only 'yuv420p' is supported, got {self.pix_fmt!r}")

    @property
    def encoder(self) -> str:
        return CODECS[self.codec]

    def options(self) -> dict[str, str]:
        opts = {"g": str(self.g)}
        if self.crf is not None:
            opts["crf"] = str(self.crf)
        if self.encoder == "libx264":
            opts.update(preset=str(self.preset or "veryfast"), bf="0", threads="1")
        elif self.encoder == "libsvtav1":
            opts.update(preset=str(12 if self.preset is None else self.preset), **{"svtav1-params": "lp=1"})
        return opts


_CANONICAL = {"libx264": "h264", "libsvtav1": "av1", "libx265": "hevc"}


def _stats_sample(frames: np.ndarray, k: int) -> np.ndarray:
    """k evenly spaced frames, every 4th pixel: plenty for colour stats, tiny to ship between processes."""
    sel = np.linspace(0, len(frames) - 1, min(k, len(frames))).round().astype(int)
    return np.ascontiguousarray(np.asarray(frames)[sel][:, ::4, ::4])


@dataclass
class EncodedVideo:
    """One episode's camera stream already encoded to its own mp4 (e.g. by a collection worker), ready to be
    appended to the dataset's video file by stream copy (no re-encoding). Make it with `encode_episode_video`."""

    path: str
    num_frames: int
    height: int
    width: int
    codec: str
    stats_frames: np.ndarray  # a small frame subsample for the image stats


def encode_episode_video(frames: np.ndarray, path: str | os.PathLike, fps: int, cfg: VideoConfig | None = None,
                         stats_frames: int = 8) -> EncodedVideo:
    """Encode (T, H, W, 3) uint8 frames to `path` (pts from 0) for `LeRobotDatasetWriter.add_episode`."""
    cfg = cfg or VideoConfig()
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"expected uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}")
    w = _VideoWriter(Path(path), fps, cfg)
    try:
        w.write(frames)
    finally:
        w.close()
    return EncodedVideo(str(path), len(frames), frames.shape[1], frames.shape[2], _CANONICAL[cfg.encoder],
                        _stats_sample(frames, stats_frames))


class _VideoWriter:
    """One mp4 stream, frames appended across episodes with pts = running frame count (time base 1/fps), either
    encoded here (`write`) or copied from per-episode mp4s (`append_encoded`); one mode per file."""

    def __init__(self, path: Path, fps: int, cfg: VideoConfig):
        import av

        self.path, self.fps, self.cfg = path, fps, cfg
        path.parent.mkdir(parents=True, exist_ok=True)
        if cfg.encoder == "libsvtav1":
            os.environ.setdefault("SVT_LOG", "1")  # errors only; svt-av1 prints a banner otherwise
        self._container = av.open(str(path), "w")
        self._stream = None
        self._copying = False
        self.count = 0
        self.shape: tuple[int, int] | None = None

    def write(self, frames: np.ndarray) -> None:
        import av

        h, w = frames.shape[1:3]
        if self._copying:
            raise ValueError(f"{self.path}: cannot mix encoded episodes and raw frames in one video file")
        if self._stream is None:
            if h % 2 or w % 2:
                raise ValueError(f"{self.path}: yuv420p needs even height and width, got {h}x{w}")
            self._stream = self._container.add_stream(self.cfg.encoder, rate=self.fps, options=self.cfg.options())
            self._stream.width, self._stream.height, self._stream.pix_fmt = w, h, self.cfg.pix_fmt
            self.shape = (h, w)
        elif (h, w) != self.shape:
            raise ValueError(f"{self.path}: frame size {h}x{w} differs from the stream's {self.shape}")
        for img in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts, frame.time_base = self.count, Fraction(1, self.fps)
            self._container.mux(self._stream.encode(frame))
            self.count += 1

    def append_encoded(self, ev: EncodedVideo) -> None:
        """Stream-copy one pre-encoded episode, shifting its timestamps to follow the frames already written."""
        import av

        if self._stream is not None and not self._copying:
            raise ValueError(f"{self.path}: cannot mix encoded episodes and raw frames in one video file")
        if ev.codec != _CANONICAL[self.cfg.encoder]:
            raise ValueError(f"{ev.path}: encoded with {ev.codec}, this dataset uses {_CANONICAL[self.cfg.encoder]}")
        try:
            inp = av.open(ev.path)
        except (OSError, av.error.FFmpegError) as e:
            raise ValueError(f"{ev.path}: cannot open encoded episode ({e})") from e
        with inp:
            ist = inp.streams.video[0]
            if (ist.height, ist.width) != (ev.height, ev.width):
                raise ValueError(f"{ev.path}: video is {ist.height}x{ist.width}, expected {ev.height}x{ev.width}")
            if self._stream is None:
                self._stream = self._container.add_stream_from_template(ist, opaque=True)
                self._stream.time_base = ist.time_base
                self._copying, self.shape = True, (ist.height, ist.width)
            elif (ist.height, ist.width) != self.shape:
                raise ValueError(f"{ev.path}: frame size {ist.height}x{ist.width} differs from the stream's {self.shape}")
            offset = round(Fraction(self.count, self.fps) / ist.time_base)
            n = 0
            for pkt in inp.demux(ist):
                if pkt.dts is None:
                    continue
                pkt.pts += offset
                pkt.dts += offset
                pkt.stream = self._stream
                self._container.mux(pkt)
                n += 1
        if n != ev.num_frames:
            raise ValueError(f"{ev.path}: holds {n} frames, expected {ev.num_frames}")
        self.count += n

    def close(self) -> None:
        if self._stream is not None and not self._copying:
            self._container.mux(self._stream.encode())
        self._container.close()


class _VideoReader:
    """Random access to one mp4 by timestamp (PyAV), reopened lazily in each process."""

    def __init__(self, path: Path, tolerance_s: float):
        self.path, self.tolerance_s = path, tolerance_s
        self._container = None
        self._pid = -1

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_container": None, "_pid": -1}  # containers do not pickle; reopen on use

    def _open(self):
        import av

        if self._container is None or self._pid != os.getpid():
            try:
                self._container = av.open(str(self.path))
            except (OSError, av.error.FFmpegError) as e:
                raise DatasetError(self.path, f"cannot open video ({e})") from e
            self._pid = os.getpid()
        return self._container

    def probe(self) -> dict:
        c = self._open()
        if not c.streams.video:
            raise DatasetError(self.path, "no video stream")
        s = c.streams.video[0]
        return {"video.height": s.height, "video.width": s.width, "video.codec": s.codec.canonical_name,
                "video.pix_fmt": s.pix_fmt, "video.fps": int(s.base_rate) if s.base_rate else None,
                "video.channels": 3}

    def decode(self, timestamps: Sequence[float]) -> np.ndarray:
        """Frames (N, H, W, 3) uint8 nearest to each timestamp (seconds); error beyond tolerance."""
        import av

        c = self._open()
        stream = c.streams.video[0]
        first, last = min(timestamps), max(timestamps)
        frames: list[np.ndarray] = []
        stamps: list[float] = []
        try:
            c.seek(max(0, int(first / stream.time_base) - 1), stream=stream, backward=True, any_frame=False)
            for frame in c.decode(stream):
                if frame.pts is None:
                    continue
                ts = float(frame.pts * stream.time_base)
                if ts < first - self.tolerance_s:
                    continue
                frames.append(frame.to_ndarray(format="rgb24"))
                stamps.append(ts)
                if ts >= last - self.tolerance_s:
                    break
        except av.error.FFmpegError as e:
            self._container = None
            raise DatasetError(self.path, f"video decoding failed near t={first:.3f}s ({e})") from e
        if not frames:
            raise DatasetError(self.path, f"no frame decoded in [{first:.4f}, {last:.4f}] s (truncated video?)")
        st = np.asarray(stamps)
        out = []
        for q in timestamps:
            i = int(np.argmin(np.abs(st - q)))
            if abs(st[i] - q) > self.tolerance_s:
                raise DatasetError(self.path, f"no frame within {self.tolerance_s}s of t={q:.4f}s (closest {st[i]:.4f}s)")
            out.append(frames[i])
        return np.stack(out)


# ----------------------------------------------------------------------------------------------------------- stats


def feature_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """LeRobot-style stats of a (N, ...) array over axis 0: min/max/mean/std/count + quantiles q01..q99."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if len(x) == 0:
        raise ValueError("cannot compute stats of an empty array")
    out = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0), "count": np.array([len(x)])}
    qs = np.quantile(x, list(QUANTILES.values()), axis=0)
    out.update({k: qs[i] for i, k in enumerate(QUANTILES)})
    return out


def image_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel stats of uint8 frames (N, H, W, 3), scaled to [0, 1], each stat shaped (3, 1, 1) as LeRobot."""
    px = frames.reshape(-1, frames.shape[-1]).astype(np.float64) / 255.0
    st = feature_stats(px)
    return {k: (v if k == "count" else v.reshape(-1, 1, 1)) for k, v in st.items()} | {"count": np.array([len(frames)])}


def _aggregate_numeric(stats: dict[str, np.ndarray]) -> dict[str, list]:
    return {k: np.asarray(v).tolist() for k, v in stats.items()}


# ----------------------------------------------------------------------------------------------------------- writer


def robot_features(
    cameras: Mapping[str, tuple[int, int]],
    state_names: Sequence[str] = ("x", "y", "z", "qx", "qy", "qz", "qw", "gripper"),
    action_names: Sequence[str] = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"),
    language_motion: bool = True,
    keypoints: bool = False,
    object_names: Sequence[str] = (),
) -> dict[str, dict]:
    """Feature dict for a robot dataset: `observation.images.<cam>` videos, state, action, optional motion text,
    optional `observation.keypoints` (6 floats: target, destination and gripper (u, v) in the primary camera) and,
    with `object_names`, `observation.object_keypoints` (each named object's (u, v) there, 0 where absent) with
    `observation.object_visible` (1.0 where the object is in the scene, else 0.0)."""
    feats: dict[str, dict] = {}
    for cam, (h, w) in cameras.items():
        feats[f"observation.images.{cam}"] = {"dtype": "video", "shape": [h, w, 3],
                                              "names": ["height", "width", "channels"]}
    feats["observation.state"] = {"dtype": "float32", "shape": [len(state_names)], "names": list(state_names)}
    feats["action"] = {"dtype": "float32", "shape": [len(action_names)], "names": list(action_names)}
    if language_motion:
        feats["language_motion"] = {"dtype": "string", "shape": [1], "names": None}
    if keypoints:
        feats[KEYPOINTS_KEY] = {"dtype": "float32", "shape": [len(KEYPOINT_NAMES)], "names": list(KEYPOINT_NAMES)}
    if object_names:
        feats[OBJECT_KEYPOINTS_KEY] = {"dtype": "float32", "shape": [2 * len(object_names)],
                                       "names": [f"{n}_{c}" for n in object_names for c in "uv"]}
        feats[OBJECT_VISIBLE_KEY] = {"dtype": "float32", "shape": [len(object_names)], "names": list(object_names)}
    return feats


def _arrow_type(ft: dict) -> pa.DataType:
    dtype, shape = ft["dtype"], list(ft["shape"])
    if dtype == "string":
        return pa.string()
    base = pa.from_numpy_dtype(np.dtype(dtype))
    if shape == [1]:
        return base
    if len(shape) == 1:
        return pa.list_(base, shape[0])
    raise ValueError(f"only scalar and 1-D numeric features can be written, got shape {shape}")


class LeRobotDatasetWriter:
    """Write a LeRobot v3.0 dataset episode by episode; `finalize()` (or leaving the `with` block) writes meta/.

    features: user features (see `robot_features`); the default index/timestamp features are added.
    """

    def __init__(self, root: str | os.PathLike, fps: int, features: Mapping[str, dict], *,
                 robot_type: str = "unknown", video: VideoConfig | None = None, overwrite: bool = False,
                 stats_frames_per_episode: int = 8):
        self.root = Path(root)
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        if self.root.exists() and any(self.root.iterdir()):
            if not overwrite:
                raise FileExistsError(f"{self.root} exists and is not empty (pass overwrite=True)")
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        for key, ft in features.items():
            if key in DEFAULT_FEATURES:
                raise ValueError(f"feature {key!r} is reserved (added automatically)")
            if ft.get("dtype") not in _NUMERIC | {"video", "string"}:
                raise ValueError(f"feature {key!r}: unsupported dtype {ft.get('dtype')!r}")
            if "shape" not in ft:
                raise ValueError(f"feature {key!r}: missing 'shape'")
        self.fps, self.robot_type = fps, robot_type
        self.video = video or VideoConfig()
        self.features = {k: {**v, "shape": list(v["shape"])} for k, v in features.items()} | {
            k: dict(v) for k, v in DEFAULT_FEATURES.items()}
        self.video_keys = [k for k, f in self.features.items() if f["dtype"] == "video"]
        self.schema = pa.schema([(k, _arrow_type(f)) for k, f in self.features.items() if f["dtype"] != "video"])
        self._stats_frames = stats_frames_per_episode
        self._tasks: dict[str, int] = {}
        self._episodes: list[dict] = []
        self._numeric: dict[str, list[np.ndarray]] = {k: [] for k, f in self.features.items()
                                                     if f["dtype"] in _NUMERIC}
        self._img_samples: dict[str, list[np.ndarray]] = {k: [] for k in self.video_keys}
        self._videos = {k: _VideoWriter(self.root / VIDEO_PATH.format(video_key=k, chunk_index=0, file_index=0),
                                        fps, self.video) for k in self.video_keys}
        self._data_path = self.root / DATA_PATH.format(chunk_index=0, file_index=0)
        self._data_path.parent.mkdir(parents=True, exist_ok=True)
        self._pq = pq.ParquetWriter(str(self._data_path), self.schema, compression="snappy")
        self._total = 0
        self._closed = False

    def __enter__(self) -> LeRobotDatasetWriter:
        return self

    def __exit__(self, exc_type, *_: Any) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.abort()

    @property
    def num_episodes(self) -> int:
        return len(self._episodes)

    def add_episode(self, frames: Mapping[str, Any], task: str) -> int:
        """Append one episode. frames: every user feature -> (T, ...) array (videos (T, H, W, 3) uint8,
        strings a list of T str; a video may instead be an `EncodedVideo` made with the same VideoConfig and fps).
        Returns the episode index. A failure while appending videos leaves the writer unusable (aborted)."""
        if self._closed:
            raise RuntimeError("writer is finalized")
        if not isinstance(task, str) or not task:
            raise ValueError(f"task must be a non-empty string, got {task!r}")
        user_keys = [k for k in self.features if k not in DEFAULT_FEATURES]
        missing = [k for k in user_keys if k not in frames]
        extra = [k for k in frames if k not in self.features]
        if missing or extra:
            raise ValueError(f"episode frames: missing features {missing}, unknown features {extra}")
        lengths = {k: (frames[k].num_frames if isinstance(frames[k], EncodedVideo) else len(frames[k]))
                   for k in user_keys}
        length = next(iter(lengths.values()))
        if len(set(lengths.values())) != 1:
            raise ValueError(f"episode features have different lengths: {lengths}")
        if length < 1:
            raise ValueError("episode is empty")
        ep = len(self._episodes)
        cols: dict[str, Any] = {}
        for k in user_keys:
            ft = self.features[k]
            if ft["dtype"] == "string":
                vals = list(frames[k])
                if not all(isinstance(v, str) for v in vals):
                    raise ValueError(f"feature {k!r}: expected a list of str")
                cols[k] = pa.array(vals, pa.string())
                continue
            arr = frames[k] if isinstance(frames[k], EncodedVideo) else np.asarray(frames[k])
            want = (length, *ft["shape"]) if ft["shape"] != [1] else (length,)
            if ft["dtype"] == "video":
                if isinstance(frames[k], EncodedVideo):
                    ev = frames[k]
                    if [ev.height, ev.width, 3] != ft["shape"]:
                        raise ValueError(f"feature {k!r}: encoded video is {ev.height}x{ev.width}, feature shape is "
                                         f"{ft['shape']}")
                    if ev.codec != _CANONICAL[self.video.encoder]:
                        raise ValueError(f"feature {k!r}: encoded with {ev.codec}, the dataset uses "
                                         f"{_CANONICAL[self.video.encoder]}")
                    continue
                if arr.dtype != np.uint8 or arr.ndim != 4 or list(arr.shape[1:]) != ft["shape"]:
                    raise ValueError(f"feature {k!r}: expected uint8 frames (T, {', '.join(map(str, ft['shape']))}),"
                                     f" got {arr.dtype} {arr.shape}")
                continue
            if arr.shape == (length, 1) and ft["shape"] == [1]:
                arr = arr[:, 0]
            if arr.shape != want:
                raise ValueError(f"feature {k!r}: expected shape {want}, got {arr.shape}")
            arr = arr.astype(ft["dtype"])
            if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
                raise ValueError(f"feature {k!r}: contains NaN or inf")
            cols[k] = arr
        task_index = self._tasks.setdefault(task, len(self._tasks))
        cols["timestamp"] = (np.arange(length) / self.fps).astype(np.float32)
        cols["frame_index"] = np.arange(length, dtype=np.int64)
        cols["episode_index"] = np.full(length, ep, dtype=np.int64)
        cols["index"] = np.arange(self._total, self._total + length, dtype=np.int64)
        cols["task_index"] = np.full(length, task_index, dtype=np.int64)
        arrays = []
        for field in self.schema:
            v = cols[field.name]
            if isinstance(v, pa.Array):
                arrays.append(v)
            elif pa.types.is_fixed_size_list(field.type):
                arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), field.type.list_size))
            else:
                arrays.append(pa.array(v, field.type))
        self._pq.write_table(pa.Table.from_arrays(arrays, schema=self.schema))
        row: dict[str, Any] = {"episode_index": ep, "tasks": [task], "length": length,
                               "data/chunk_index": 0, "data/file_index": 0,
                               "dataset_from_index": self._total, "dataset_to_index": self._total + length}
        ep_stats: dict[str, dict] = {}
        for k in self._numeric:
            self._numeric[k].append(cols[k])
            ep_stats[k] = feature_stats(cols[k])
        for k in self.video_keys:
            w = self._videos[k]
            start = w.count
            try:
                if isinstance(frames[k], EncodedVideo):
                    w.append_encoded(frames[k])
                    sample = np.asarray(frames[k].stats_frames)
                else:
                    w.write(np.asarray(frames[k]))
                    sample = _stats_sample(frames[k], self._stats_frames)
            except Exception:
                self.abort()  # the data rows are written already: the dataset cannot be completed
                raise
            row |= {f"videos/{k}/chunk_index": 0, f"videos/{k}/file_index": 0,
                    f"videos/{k}/from_timestamp": start / self.fps, f"videos/{k}/to_timestamp": w.count / self.fps}
            self._img_samples[k].append(sample)
            ep_stats[k] = image_stats(sample)
        row["meta/episodes/chunk_index"], row["meta/episodes/file_index"] = 0, 0
        for k, st in ep_stats.items():
            for s, v in st.items():
                row[f"stats/{k}/{s}"] = np.asarray(v).tolist()
        self._episodes.append(row)
        self._total += length
        return ep

    def abort(self) -> None:
        """Close the streams without writing meta/ (the directory is left incomplete)."""
        if self._closed:
            return
        self._closed = True
        self._pq.close()
        for w in self._videos.values():
            w.close()

    def finalize(self) -> Path:
        """Close the streams and write meta/ (info.json last, so a crash leaves no valid dataset)."""
        if self._closed:
            return self.root
        if not self._episodes:
            self.abort()
            raise ValueError("no episode was added")
        self._closed = True
        self._pq.close()
        video_info = {}
        for k, w in self._videos.items():
            w.close()
            info = _VideoReader(w.path, 1e-4).probe()
            info |= {"video.g": self.video.g, "video.crf": self.video.crf, "video.preset": self.video.options().get(
                "preset"), "video.fast_decode": 0, "video.extra_options": {}, "video.video_backend": "pyav",
                "is_depth_map": False, "has_audio": False}
            video_info[k] = info
        meta = self.root / "meta"
        meta.mkdir(parents=True, exist_ok=True)
        # tasks.parquet: pandas DataFrame(index=task) layout, with pandas metadata so LeRobot gets the index back
        tasks = sorted(self._tasks, key=self._tasks.get)
        tasks_tab = pa.table({"task_index": pa.array([self._tasks[t] for t in tasks], pa.int64()),
                              "task": pa.array(tasks, pa.string())})
        pq.write_table(tasks_tab.replace_schema_metadata({b"pandas": json.dumps(_PANDAS_TASKS_META).encode()}),
                       str(meta / "tasks.parquet"))
        ep_path = self.root / EPISODES_PATH.format(chunk_index=0, file_index=0)
        ep_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(self._episodes), str(ep_path))
        stats: dict[str, dict] = {}
        for k, chunks in self._numeric.items():
            stats[k] = _aggregate_numeric(feature_stats(np.concatenate(chunks)))
        for k, samples in self._img_samples.items():
            st = image_stats(np.concatenate(samples))
            st["count"] = np.array([self._total])
            stats[k] = _aggregate_numeric(st)
        (meta / "stats.json").write_text(json.dumps(stats, indent=2))
        features = {k: ({**f, "info": video_info[k]} if k in video_info else f) for k, f in self.features.items()}
        info = {
            "codebase_version": CODEBASE_VERSION, "robot_type": self.robot_type,
            "total_episodes": len(self._episodes), "total_frames": self._total, "total_tasks": len(tasks),
            "chunks_size": DEFAULT_CHUNKS_SIZE, "data_files_size_in_mb": 100, "video_files_size_in_mb": 200,
            "fps": self.fps, "splits": {"train": f"0:{len(self._episodes)}"},
            "data_path": DATA_PATH, "video_path": VIDEO_PATH if self.video_keys else None, "features": features,
        }
        (meta / "info.json").write_text(json.dumps(info, indent=4))
        logger.info("wrote %d episodes / %d frames to %s", len(self._episodes), self._total, self.root)
        return self.root


_PANDAS_TASKS_META = {
    "index_columns": ["task"],
    "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                        "metadata": {"encoding": "UTF-8"}}],
    "columns": [
        {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
         "metadata": None},
        {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object", "metadata": None},
    ],
    "creator": {"library": "pyarrow", "version": pa.__version__},
    "pandas_version": "2.2.3",
}


def write_annotations(root: str | os.PathLike, records: Sequence[Mapping[str, Any]]) -> Path:
    """Write VLA-IT annotation records (each with integer episode_index and frame_index) to meta/vla_it.jsonl."""
    path = Path(root) / ANNOTATIONS_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for i, r in enumerate(records):
            if not isinstance(r.get("episode_index"), int) or not isinstance(r.get("frame_index"), int):
                raise ValueError(f"annotation record {i}: needs integer 'episode_index' and 'frame_index'")
            f.write(json.dumps(dict(r)) + "\n")
    return path


# ----------------------------------------------------------------------------------------------------------- reader


def _read_json(path: Path) -> Any:
    if not path.exists():
        raise DatasetError(path, "file is missing")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(path, f"invalid JSON ({e})") from e


def _read_parquet(path: Path) -> pa.Table:
    if not path.exists():
        raise DatasetError(path, "file is missing")
    try:
        return pq.read_table(str(path))
    except (pa.ArrowException, OSError) as e:
        raise DatasetError(path, f"unreadable parquet (truncated or corrupt?): {e}") from e


def _column_to_numpy(col: pa.ChunkedArray, ft: dict, path: Path, key: str) -> np.ndarray:
    shape = list(ft["shape"])
    col = col.combine_chunks()
    if ft["dtype"] == "string":
        return np.asarray(col.to_pylist(), dtype=object)
    if shape == [1]:
        if pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type):
            if len(col.flatten()) != len(col):
                raise DatasetError(path, f"feature {key!r}: expected scalars (shape [1]), found lists")
            col = col.flatten()
        return col.to_numpy(zero_copy_only=False).astype(ft["dtype"])
    if not (pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type)
            or pa.types.is_large_list(col.type)):
        raise DatasetError(path, f"feature {key!r}: expected a list column of shape {shape}, found {col.type}")
    size = int(np.prod(shape))
    lens = col.value_lengths().to_numpy(zero_copy_only=False) if not pa.types.is_fixed_size_list(col.type) else (
        np.full(len(col), col.type.list_size))
    if len(lens) and (lens != shape[0]).any():
        bad = int(lens[lens != shape[0]][0])
        raise DatasetError(path, f"feature {key!r}: info.json says shape {shape}, rows have length {bad}")
    flat = col.flatten()
    while pa.types.is_list(flat.type) or pa.types.is_fixed_size_list(flat.type):
        flat = flat.flatten()
    arr = flat.to_numpy(zero_copy_only=False)
    if arr.size != len(col) * size:
        raise DatasetError(path, f"feature {key!r}: data does not match shape {shape}")
    return arr.reshape(len(col), *shape).astype(ft["dtype"])


class DecodedFrames:
    """LRU of whole decoded episodes, (episode, camera) -> (T, H, W, 3) uint8, within a byte budget. Readers of the
    same dataset files share one (see `sharing_decoded_frames`)."""

    def __init__(self, budget: int):
        self.budget = budget
        self.episodes: OrderedDict[tuple[int, str], np.ndarray] = OrderedDict()
        self.nbytes = 0

    def get(self, key: tuple[int, str]) -> np.ndarray | None:
        frames = self.episodes.get(key)
        if frames is not None:
            self.episodes.move_to_end(key)
        return frames

    def put(self, key: tuple[int, str], frames: np.ndarray) -> None:
        frames.setflags(write=False)  # shared by every sample (and reader) that reads it
        self.episodes[key] = frames
        self.nbytes += frames.nbytes
        while self.nbytes > self.budget and len(self.episodes) > 1:
            _, old = self.episodes.popitem(last=False)
            self.nbytes -= old.nbytes


# Readers alive at the same time share the decoded frames of the same files; inside `sharing_decoded_frames` they
# are also kept for a reader opened later (the next training stage of the same process).
_decoded_by_files: weakref.WeakValueDictionary[tuple, DecodedFrames] = weakref.WeakValueDictionary()
_kept_decoded: list[DecodedFrames] | None = None


@contextmanager
def sharing_decoded_frames() -> Iterator[None]:
    """Within this block the decoded episodes of a reader opened in it outlive the reader: a later reader of the
    same, unchanged files (a later training stage in the same process) starts with them instead of decoding the
    videos again. They are released when the outermost block ends."""
    global _kept_decoded
    outer = _kept_decoded
    if outer is None:
        _kept_decoded = []
    try:
        yield
    finally:
        if outer is None:
            _kept_decoded = None


def _decoded_frames_for(files: tuple, budget: int) -> DecodedFrames:
    key = (files, budget)
    cache = _decoded_by_files.get(key)
    if cache is None:
        cache = DecodedFrames(budget)
        _decoded_by_files[key] = cache
    if _kept_decoded is not None and all(c is not cache for c in _kept_decoded):
        _kept_decoded.append(cache)
    return cache


@dataclass
class Episode:
    """One row of meta/episodes: where an episode's frames live."""

    index: int
    tasks: list[str]
    length: int
    start: int  # dataset_from_index
    stop: int  # dataset_to_index
    row: dict  # the raw row (file indices, video timestamps, stats)


class LeRobotDatasetReader:
    """Read a LeRobot v3.0 dataset: metadata, per-frame columns, decoded camera frames, VLA-IT annotations.

    root:         dataset directory.
    cache_bytes:  budget for decoded whole episodes kept in memory (LRU). When the entire dataset's decoded frames
                  fit, episodes are decoded whole on first use (fast for training); otherwise single frames are
                  decoded by seeking.
    check_stats:  verify meta/stats.json min/max/count against the data.
    """

    def __init__(self, root: str | os.PathLike, *, cache_bytes: int = 2 << 30, tolerance_s: float = 1e-4,
                 check_stats: bool = True):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(self.root, "dataset directory does not exist")
        self.tolerance_s = tolerance_s
        self.info = _read_json(self.root / INFO_PATH)
        missing = [k for k in REQUIRED_INFO_KEYS if k not in self.info]
        if missing:
            raise DatasetError(self.root / INFO_PATH, f"missing key(s) {missing}")
        if self.info["codebase_version"] != CODEBASE_VERSION:
            raise DatasetError(self.root / INFO_PATH,
                               f"codebase_version {self.info['codebase_version']!r} is not {CODEBASE_VERSION!r}")
        self.fps = int(self.info["fps"])
        self.features: dict[str, dict] = self.info["features"]
        for k, ft in self.features.items():
            if "dtype" not in ft or "shape" not in ft:
                raise DatasetError(self.root / INFO_PATH, f"feature {k!r} lacks 'dtype' or 'shape'")
        self.video_keys = [k for k, f in self.features.items() if f["dtype"] == "video"]
        self.image_keys = [k for k, f in self.features.items() if f["dtype"] == "image"]
        if self.video_keys and not self.info.get("video_path"):
            raise DatasetError(self.root / INFO_PATH, "video features present but 'video_path' is missing")
        self.tasks = self._load_tasks()
        self.episodes = self._load_episodes()
        self._data, self._images = self._load_data()
        self.stats = self._load_stats(check_stats)
        self._videos: dict[Path, _VideoReader] = {}
        for ep in self.episodes:
            for k in self.video_keys:
                self._video(ep.index, k)
        for k in self.video_keys:
            self._check_video_shape(k)
        self._annotations: dict[int, dict[int, dict]] | None = None
        self._decoded = _decoded_frames_for(self._files_fingerprint(), cache_bytes)
        frame_bytes = sum(int(np.prod(self.features[k]["shape"])) for k in self.camera_keys)
        self.whole_episode_decoding = frame_bytes * len(self) <= cache_bytes

    def _files_fingerprint(self) -> tuple:
        """Every file of the dataset with its size and modification time: decoded frames are shared only between
        readers of the very same files."""
        out = []
        for sub in ("meta", "data", "videos"):
            for path in sorted((self.root / sub).rglob("*")):
                if path.is_file():
                    st = path.stat()
                    out.append((str(path.resolve()), st.st_size, st.st_mtime_ns))
        return tuple(out)

    def __getstate__(self) -> dict:
        # decoded-frame cache stays behind (DataLoader workers with spawn get a light copy)
        return {**self.__dict__, "_decoded": DecodedFrames(self._decoded.budget)}

    # --- metadata loading
    def _load_tasks(self) -> list[str]:
        path = self.root / TASKS_PATH
        tab = _read_parquet(path)
        if "task_index" not in tab.column_names:
            raise DatasetError(path, "missing column 'task_index'")
        names = [c for c in tab.column_names if c in ("task", "__index_level_0__")]
        if not names:
            raise DatasetError(path, "missing the task strings (column/index 'task')")
        idx = tab.column("task_index").to_pylist()
        strs = tab.column(names[0]).to_pylist()
        tasks = [""] * len(idx)
        for i, s in zip(idx, strs):
            if not 0 <= i < len(idx):
                raise DatasetError(path, f"task_index {i} out of range")
            tasks[i] = s
        return tasks

    def _load_episodes(self) -> list[Episode]:
        files = sorted((self.root / "meta/episodes").glob("*/*.parquet"))
        if not files:
            raise DatasetError(self.root / "meta/episodes", "no episodes parquet file")
        rows: list[dict] = []
        for f in files:
            tab = _read_parquet(f)
            for col in ("episode_index", "length", "dataset_from_index", "dataset_to_index", "data/chunk_index",
                        "data/file_index"):
                if col not in tab.column_names:
                    raise DatasetError(f, f"missing column {col!r}")
            for k in self.video_keys:
                for s in ("chunk_index", "file_index", "from_timestamp", "to_timestamp"):
                    if f"videos/{k}/{s}" not in tab.column_names:
                        raise DatasetError(f, f"missing column 'videos/{k}/{s}'")
            keep = [c for c in tab.column_names if not c.startswith("stats/")]
            rows += tab.select(keep).to_pylist()
        rows.sort(key=lambda r: r["episode_index"])
        eps = []
        where = self.root / "meta/episodes"
        for i, r in enumerate(rows):
            if r["episode_index"] != i:
                raise DatasetError(where, f"episode indices are not 0..N-1 (found {r['episode_index']} at {i})")
            if r["dataset_to_index"] - r["dataset_from_index"] != r["length"]:
                raise DatasetError(where, f"episode {i}: length {r['length']} != to-from index")
            eps.append(Episode(i, list(r.get("tasks") or []), int(r["length"]), int(r["dataset_from_index"]),
                               int(r["dataset_to_index"]), r))
        if len(eps) != self.info["total_episodes"]:
            raise DatasetError(self.root / INFO_PATH,
                               f"total_episodes={self.info['total_episodes']} but meta/episodes has {len(eps)} rows")
        return eps

    def _load_data(self) -> tuple[dict[str, np.ndarray], dict[str, list]]:
        files: list[tuple[int, int]] = []
        for ep in self.episodes:
            key = (int(ep.row["data/chunk_index"]), int(ep.row["data/file_index"]))
            if key not in files:
                files.append(key)
        cols: dict[str, list[np.ndarray]] = {}
        images: dict[str, list] = {k: [] for k in self.image_keys}
        for c, fi in files:
            path = self.root / self.info["data_path"].format(chunk_index=c, file_index=fi)
            tab = _read_parquet(path)
            for k, ft in self.features.items():
                if ft["dtype"] == "video":
                    continue
                if k not in tab.column_names:
                    raise DatasetError(path, f"missing column {k!r} declared in info.json features")
                if ft["dtype"] == "image":
                    images[k] += tab.column(k).to_pylist()
                    continue
                cols.setdefault(k, []).append(_column_to_numpy(tab.column(k), ft, path, k))
        data = {k: np.concatenate(v) for k, v in cols.items()}
        n = len(data["index"])
        if n != self.info["total_frames"]:
            raise DatasetError(self.root / INFO_PATH, f"total_frames={self.info['total_frames']} but data has {n} rows")
        order = np.argsort(data["index"], kind="stable")
        data = {k: v[order] for k, v in data.items()}
        images = {k: [v[i] for i in order] for k, v in images.items()}
        for ep in self.episodes:
            seg = data["episode_index"][ep.start:ep.stop]
            if len(seg) != ep.length or (seg != ep.index).any():
                raise DatasetError(self.root / self.info["data_path"].format(
                    chunk_index=ep.row["data/chunk_index"], file_index=ep.row["data/file_index"]),
                    f"rows {ep.start}:{ep.stop} do not all belong to episode {ep.index}")
        if len(self.tasks) and (data["task_index"].max() >= len(self.tasks) or data["task_index"].min() < 0):
            raise DatasetError(self.root / TASKS_PATH, "data refers to a task_index that meta/tasks.parquet lacks")
        return data, images

    def _load_stats(self, check: bool) -> dict[str, dict[str, np.ndarray]]:
        path = self.root / STATS_PATH
        raw = _read_json(path)
        stats = {k: {s: np.asarray(v, dtype=np.float64) for s, v in d.items()} for k, d in raw.items()}
        for k, ft in self.features.items():
            if ft["dtype"] in ("string", "language") or (k not in stats and ft["dtype"] in ("video", "image")):
                continue  # LeRobot keeps no stats for text; camera stats are optional for reading
            if k not in stats:
                raise DatasetError(path, f"no stats for feature {k!r}")
            lacking = [s for s in REQUIRED_STATS if s not in stats[k]]
            if lacking:
                raise DatasetError(path, f"feature {k!r} lacks stat(s) {lacking}")
            if ft["dtype"] in _NUMERIC:
                dim = int(np.prod(ft["shape"]))
                for s, v in stats[k].items():
                    if s != "count" and v.size != dim:
                        raise DatasetError(path, f"feature {k!r} stat {s!r} has {v.size} values, feature has {dim}")
                if check:
                    x = self._data[k].reshape(len(self._data[k]), -1).astype(np.float64)
                    for s, ref in (("min", x.min(0)), ("max", x.max(0))):
                        tol = 1e-4 * (1 + np.abs(ref))
                        if (np.abs(stats[k][s].reshape(-1) - ref) > tol).any():
                            raise DatasetError(path, f"feature {k!r}: stats {s} {stats[k][s].tolist()} does not "
                                                     f"match the data's {ref.tolist()} (stale or wrong stats)")
                    if int(stats[k]["count"].reshape(-1)[0]) != len(x):
                        raise DatasetError(path, f"feature {k!r}: stats count {int(stats[k]['count'][0])} != "
                                                 f"{len(x)} frames")
        return stats

    def _video(self, ep: int, key: str) -> _VideoReader:
        row = self.episodes[ep].row
        path = self.root / self.info["video_path"].format(
            video_key=key, chunk_index=int(row[f"videos/{key}/chunk_index"]),
            file_index=int(row[f"videos/{key}/file_index"]))
        if path not in self._videos:
            if not path.exists():
                raise DatasetError(path, f"video file for {key!r} (episode {ep}) is missing")
            self._videos[path] = _VideoReader(path, self.tolerance_s)
        return self._videos[path]

    def _check_video_shape(self, key: str) -> None:
        h, w, _ = self.features[key]["shape"]
        for path in sorted({self._video(e.index, key).path for e in self.episodes}):
            p = self._videos[path].probe()
            if (p["video.height"], p["video.width"]) != (h, w):
                raise DatasetError(path, f"video is {p['video.height']}x{p['video.width']}, info.json feature {key!r} "
                                         f"says {h}x{w}")

    # --- public access
    def __len__(self) -> int:
        return len(self._data["index"])

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    @property
    def camera_keys(self) -> list[str]:
        return self.video_keys + self.image_keys

    def column(self, key: str) -> np.ndarray:
        """All frames' values of a non-camera feature, in global index order."""
        if key not in self._data:
            raise KeyError(f"no column {key!r} (have {sorted(self._data)})")
        return self._data[key]

    def episode_slice(self, ep: int) -> slice:
        e = self.episodes[ep]
        return slice(e.start, e.stop)

    def episode_task(self, ep: int) -> str:
        """The task string of an episode (its first frame's task_index)."""
        return self.tasks[int(self._data["task_index"][self.episodes[ep].start])]

    def locate(self, index: int) -> tuple[int, int]:
        """Global frame index -> (episode_index, frame_index)."""
        if not 0 <= index < len(self):
            raise IndexError(f"frame {index} out of range [0, {len(self)})")
        return int(self._data["episode_index"][index]), int(self._data["frame_index"][index])

    def frame(self, index: int, cameras: bool = True) -> dict[str, Any]:
        """One frame: every column's value plus decoded images (H, W, 3) uint8 and its task string."""
        ep, fi = self.locate(index)
        out: dict[str, Any] = {k: v[index] for k, v in self._data.items()}
        out["task"] = self.tasks[int(out["task_index"])]
        if cameras:
            for k in self.camera_keys:
                out[k] = self.image(ep, fi, k)
        return out

    def image(self, ep: int, frame_index: int, key: str) -> np.ndarray:
        """Camera `key` at (episode, frame) as (H, W, 3) uint8."""
        e = self.episodes[ep]
        if not 0 <= frame_index < e.length:
            raise IndexError(f"frame {frame_index} out of range for episode {ep} (length {e.length})")
        if key in self.image_keys:
            return _decode_png(self._images[key][e.start + frame_index], self.root, key)
        if key not in self.video_keys:
            raise KeyError(f"no camera {key!r} (have {self.camera_keys})")
        cached = self._decoded.get((ep, key))
        if cached is not None:
            return cached[frame_index]
        if self.whole_episode_decoding:
            return self.episode_frames(ep, key)[frame_index]
        ts = float(e.row[f"videos/{key}/from_timestamp"]) + float(self._data["timestamp"][e.start + frame_index])
        return self._video(ep, key).decode([ts])[0]

    def episode_frames(self, ep: int, key: str) -> np.ndarray:
        """All frames of camera `key` in episode `ep`, (T, H, W, 3) uint8 (decoded once, then LRU-cached)."""
        cached = self._decoded.get((ep, key))
        if cached is not None:
            return cached
        e = self.episodes[ep]
        if key in self.image_keys:
            frames = np.stack([self.image(ep, i, key) for i in range(e.length)])
        else:
            start = float(e.row[f"videos/{key}/from_timestamp"])
            ts = start + self._data["timestamp"][e.start:e.stop].astype(np.float64)
            frames = self._video(ep, key).decode(ts.tolist())
            if frames.shape[1:] != tuple(self.features[key]["shape"]):
                raise DatasetError(self._video(ep, key).path, f"decoded frames {frames.shape[1:]} != feature shape")
        self._decoded.put((ep, key), frames)
        return frames

    # --- annotations
    def _load_annotations(self) -> dict[int, dict[int, dict]]:
        path = self.root / ANNOTATIONS_PATH
        out: dict[int, dict[int, dict]] = {}
        if not path.exists():
            return out
        for n, rec in iter_jsonl(path, error=line_error):
            ep, fi = rec.get("episode_index"), rec.get("frame_index")
            if not isinstance(ep, int) or not isinstance(fi, int):
                raise DatasetError(path, f"line {n}: needs integer 'episode_index' and 'frame_index'")
            if not 0 <= ep < self.num_episodes or not 0 <= fi < self.episodes[ep].length:
                raise DatasetError(path, f"line {n}: (episode {ep}, frame {fi}) is not in the dataset")
            out.setdefault(ep, {})[fi] = rec
        return out

    @property
    def annotations(self) -> dict[int, dict[int, dict]]:
        """episode_index -> frame_index -> VLA-IT record (from meta/vla_it.jsonl; empty if absent)."""
        if self._annotations is None:
            self._annotations = self._load_annotations()
        return self._annotations

    def annotation(self, ep: int, frame_index: int = 0) -> dict | None:
        """The VLA-IT record for (episode, frame): the exact frame's, else the latest earlier annotated frame of
        the episode (an episode-level annotation is stored at frame 0), else None."""
        recs = self.annotations.get(ep)
        if not recs:
            return None
        if frame_index in recs:
            return recs[frame_index]
        earlier = [f for f in recs if f <= frame_index]
        return recs[max(earlier)] if earlier else None

    def iter_episodes(self) -> Iterator[Episode]:
        return iter(self.episodes)


def _decode_png(value: Any, root: Path, key: str) -> np.ndarray:
    from PIL import Image

    if isinstance(value, dict):
        if value.get("bytes"):
            data = value["bytes"]
        elif value.get("path"):
            data = (root / value["path"]).read_bytes()
        else:
            raise DatasetError(root, f"image feature {key!r}: empty image struct")
    elif isinstance(value, bytes):
        data = value
    else:
        raise DatasetError(root, f"image feature {key!r}: cannot decode value of type {type(value).__name__}")
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
