"""Training configuration: frozen dataclasses built from YAML + ``key=value`` overrides.

The config is read only at the edges (``msreid train``, the Tune driver); the
library below takes plain typed arguments. ``config_to_dict`` flattens a
config to dotted keys (``"loss.alpha"``), which is what Tune's search space
and MLflow's params use; ``config_from_dict`` goes back.

Every field carries ``metadata["help"]``; fields with a closed set of values
carry ``metadata["choices"]``. An unknown key or a bad value raises ONE
``UserError`` naming the key, the value and the valid choices. Checks whose
valid values a lower layer owns (the model head, the backbone name, the
ablation and the loss terms' forms, the manifest's spectra) are in
``check_config`` and ``check_against_manifest``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from msreid import SPECTRA
from msreid.data.batches import global_batch_size, share_size
from msreid.errors import UserError

SELECTIONS = ("validation", "final")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _f(default: Any, help: str, choices: Sequence[Any] | None = None,
       neutral: bool = False) -> Any:
    """A config field; ``neutral``: it cannot change any number the run reports (reuse check)."""
    meta: dict[str, Any] = {"help": help, "neutral": neutral}
    if choices is not None:
        meta["choices"] = tuple(choices)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DataConfig:
    """Where the tuples come from and how they are batched and augmented."""

    manifest: str = _f("", "Parquet manifest directory or URI (s3://, gs://, file://) "
                           "written by `msreid ingest` or `msreid synth`")
    spectra: tuple[str, ...] = _f((), "spectra to train on, a subset of the manifest's "
                                      "(empty = all of them); one spectrum for one_stream")
    image_size: tuple[int, int] | None = _f(None, "(H, W) fed to the backbone; null = the "
                                                  "backbone's default input size")
    batch_mode: str = _f("uniform", "uniform: shuffled batches of batch_size tuples (paper); "
                                    "pk: P ids x K tuples per batch (official code, triplet)",
                         ("uniform", "pk"))
    batch_size: int = _f(16, "the GLOBAL batch: tuples per optimiser step over all workers "
                             "(each worker takes batch_size / num_workers); must equal P*K "
                             "in pk mode")
    P: int = _f(8, "identities per (global) batch in pk mode")
    K: int = _f(4, "tuples per identity in pk mode (drawn with replacement when an id has fewer)")
    flip_prob: float = _f(0.5, "probability of a horizontal flip (same flip for every spectrum)")
    pad: int = _f(10, "zero padding before the random crop back to image_size (0 = no crop)")
    erase_prob: float = _f(0.0, "probability of random erasing (same box for every spectrum); "
                                "the official code uses 0.5, the paper does not mention it")
    modality_dropout: float = _f(0.0, "training with missing spectra: the probability of "
                                      "dropping each spectrum of a training tuple (at least one "
                                      "is kept), drawn per tuple from (seed, epoch, plan position) "
                                      "like the augmentation; a dropped stream's feature is left "
                                      "out of the tuple's losses, as the missing-modality test "
                                      "leaves it out of the embedding (docs/TRAINING.md); msn "
                                      "losses only")
    mean: tuple[float, float, float] = _f(IMAGENET_MEAN, "per-channel mean for normalisation "
                                                         "(0-1 scale)")
    std: tuple[float, float, float] = _f(IMAGENET_STD, "per-channel std for normalisation")
    val_ids: float = _f(0.1, "validation carved from TRAIN ids: a fraction (< 1) or a count "
                             "(>= 1) of train ids, never trained on; 0 = no validation (the "
                             "last epoch's model is then the selected one)")
    val_query_per_camera: int = _f(1, "validation queries per (id, camera); the rest of the "
                                      "validation ids' tuples form the validation gallery")
    num_decode_workers: int = _f(0, "max parallel Ray Data decode tasks (0 = Ray decides)",
                                 neutral=True)
    decode_cpus: float = _f(1.0, "logical CPUs each manifest-reading and Ray Data decode task "
                                 "reserves; 0.5 lets two tasks share a CPU (the smoke suite "
                                 "fits two trials of 0.5 + 0.5 CPU on 2 cores); must be > 0",
                           neutral=True)
    batches_per_task: int = _f(8, "training batches decoded per Ray Data task (amortises the "
                                  "per-task overhead; lower it for very large batches)",
                               neutral=True)
    prefetch_batches: int = _f(2, "batches each training worker prefetches", neutral=True)
    jpeg_decoder: str = _f("pil", "JPEG decoder of the Ray Data tasks: pil, or torchvision "
                                  "(the same pixels, 4-14% more tuples per CPU-second, but "
                                  "2.2 s of CPU to import per fresh decode worker: for long "
                                  "runs; docs/PERFORMANCE.md, \"Input pipeline\")",
                           choices=("pil", "torchvision"), neutral=True)
    eval_batch_size: int = _f(64, "tuples per batch when extracting features")


@dataclass(frozen=True)
class ModelConfig:
    """The network (msreid.models.build_model)."""

    backbone: str = _f("resnet50", "a name of msreid.models.BACKBONES or any timm model")
    pretrained: bool = _f(False, "load timm's ImageNet weights (needs them cached: nothing "
                                 "downloads at run time); see pretrained_file")
    pretrained_file: str = _f("", "local .pth/.safetensors backbone weights ('' = none)")
    last_stride_1: bool = _f(False, "stride 1 in the last ResNet stage (strong baseline)")
    stem_relu: bool = _f(True, "ReLU after the ResNet stem's bn1 (timm, torchvision); false = "
                               "the authors' ResNet, which has none (docs/MODELS.md)")
    neck: str = _f("none", "none | bnneck (validated by msreid.models)")
    head: str = _f("paper", "paper: a bias-free classifier per stream whose weights give the "
                            "CAMs | official: one shared classifier with bias, CAMs from a "
                            "1x1 conv per stream (the authors' code); msreid.models.HEADS")
    embedding: str = _f("sum", "how stream features are fused for retrieval: sum (paper, MSN) "
                               "| concat | cam_official (the authors' CAM weighting) | "
                               "cam_weighted (msreid's own CAM weighting); docs/MODELS.md")
    embed_at: str = _f("before_neck", "embed features before or after the neck")
    sync_bn: str = _f("auto", "BatchNorm statistics over the global batch: auto (on when "
                              "run.num_workers > 1) | true | false", ("auto", "true", "false"))


@dataclass(frozen=True)
class LossConfig:
    """Which losses (msreid.losses.compute_losses)."""

    ablation: str = _f("hamnet", "a name of msreid.losses.ABLATIONS: the paper's Table 5 rows "
                                 "(msn, msn+hsc, msn+caid, hamnet), one_stream, and the authors' "
                                 "objective hamnet_official")
    alpha: float | None = _f(None, "the one weight of L_hsc (eq. 6) in every ablation and "
                                   "form; null = 0.001 (the paper's)")
    triplet: bool = _f(False, "add the batch-hard triplet loss (use with batch_mode=pk)")
    margin: float = _f(0.3, "triplet margin")
    label_smoothing: float = _f(0.0, "label smoothing of the ID losses")
    hsc_variant: str | None = _f(None, "paper (eq. 5) | official (1 - cosine of logits); "
                                       "null = the ablation's")
    hsc_reduction: str | None = _f(None, "how L_hsc is reduced over the batch, which the paper "
                                         "does not say: mean | sum (the authors' code); null = "
                                         "the ablation's (mean, hamnet_official: sum)")
    caid_variant: str | None = _f(None, "paper (eqs. 7-12) | official (fused score of "
                                        "sigmoid-map sums); null = the ablation's")


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and learning-rate schedule (paper: Adam, warm-up 10 epochs, x0.1 at 40, 70)."""

    optimizer: str = _f("adam", "adam | sgd", ("adam", "sgd"))
    lr: float = _f(3.5e-4, "base learning rate, reached at the end of the warm-up")
    warmup_epochs: int = _f(10, "epochs of linear warm-up")
    warmup_lr: float = _f(3.5e-5, "learning rate at epoch 0 of the warm-up")
    schedule_offset: int = _f(0, "epochs the schedule runs ahead: epoch e trains at the rate "
                                 "of e + offset; 1 = the authors' code, which steps its "
                                 "scheduler at the start of each epoch")
    milestones: tuple[int, ...] = _f((40, 70), "epochs at which the rate is multiplied by gamma")
    gamma: float = _f(0.1, "decay factor at each milestone")
    epochs: int = _f(120, "epochs in total")
    weight_decay: float = _f(0.0, "L2 weight decay (official code: 5e-4)")
    momentum: float = _f(0.9, "SGD momentum (sgd only)")


@dataclass(frozen=True)
class RunOptions:
    """How the run executes: workers, devices, seeds, evaluation and checkpoint cadence."""

    num_workers: int = _f(1, "Ray Train workers (DDP); 0 = in-process local mode, no DDP")
    use_gpu: bool = _f(False, "one GPU per worker; NCCL instead of gloo")
    cpus_per_worker: float = _f(1.0, "CPUs reserved per training worker; below 1 leaves whole "
                                     "CPUs for Ray Data on small machines (docs/RAY.md)")
    seed: int = _f(0, "seeds the model init, the validation split, the batch order and the "
                      "augmentation; the same seed gives the same run")
    selection: str = _f("validation", "validation: train on the train ids minus data.val_ids and "
                                      "test the checkpoint with the best validation mAP (for new "
                                      "research) | final: train on ALL train ids with the fixed "
                                      "schedule and test the final checkpoint once (the protocol "
                                      "of published numbers; data.val_ids is ignored)",
                        SELECTIONS)
    selection_rule: str = _f("best", "under run.selection=validation, which validated epoch is "
                                     "tested: best = the highest val mAP (earliest of ties) | "
                                     "latest_near_best = the latest epoch within one validation "
                                     "query's worth (1/num val queries) of the highest, so that "
                                     "scores the validation cannot tell apart go to the longer-"
                                     "trained model, not to float noise (docs/TRAINING.md)",
                             ("best", "latest_near_best"))
    log_final_test: bool = _f(False, "also test the last epoch's model and log it as "
                                     "final_test/* beside the selected one's test/* (off: the "
                                     "pair invites choosing on the test set by hand)")
    eval_every: int = _f(5, "validate every N epochs (and at the last epoch)")
    test_curve_every: int = _f(0, "also evaluate the TEST set every N epochs, reported as "
                                  "test_curve/*, never used for selection (0 = off)")
    precision: str = _f("fp32", "fp32 | bf16 | fp16 autocast (GPU; bf16 also on CPU)",
                        ("fp32", "bf16", "fp16"))
    channels_last: bool = _f(True, "channels-last memory format on GPU (ignored on CPU)")
    checkpoint_every: int = _f(1, "write a checkpoint every N epochs (and at each validation)",
                               neutral=True)
    missing_modality: bool = _f(True, "at the end, evaluate every subset of the spectra "
                                      "(missing-modality table)")
    per_challenge: bool = _f(True, "at the end, evaluate per challenge tag when the manifest "
                                   "has them")
    ranking_queries: int = _f(8, "queries whose top-10 gallery list goes into ranking.json")


@dataclass(frozen=True)
class TrainConfig:
    """One training run: data, model, loss, optimiser and execution options."""

    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "input pipeline"})
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "network"})
    loss: LossConfig = field(default_factory=LossConfig, metadata={"help": "losses"})
    optim: OptimConfig = field(default_factory=OptimConfig, metadata={"help": "optimiser"})
    run: RunOptions = field(default_factory=RunOptions, metadata={"help": "execution"})


SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "loss": LossConfig,
            "optim": OptimConfig, "run": RunOptions}


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """``value`` checked and converted to the annotated type ``tp``, or UserError."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{key}={value!r}: expected a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(key, v, args[0]) for v in value)
        if len(value) != len(args):
            raise UserError(f"{key}={list(value)!r}: expected {len(args)} values")
        return tuple(_coerce(key, v, a) for v, a in zip(value, args))
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"{key}={value!r}: expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{key}={value!r}: expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{key}={value!r}: expected a number")
        if not math.isfinite(value):  # YAML .nan / .inf parse as floats; no setting means them
            raise UserError(f"{key}={value!r}: expected a finite number (not nan or inf)")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"{key}={value!r}: expected a string")
        return value
    raise TypeError(f"unsupported config type {tp!r} for {key}")


def _build_section(name: str, cls: type, values: Mapping[str, Any]) -> Any:
    fields = _fields(cls)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise UserError(f"unknown config key {name}.{key}: valid keys of {name} are "
                            f"{', '.join(fields)}")
        choices = fields[key].metadata.get("choices")
        if isinstance(value, bool) and choices is not None and "true" in choices:
            value = "true" if value else "false"  # YAML reads `true` as a bool
        v = _coerce(f"{name}.{key}", value, hints[key])
        if choices is not None and v not in choices:
            raise UserError(f"{name}.{key}={v!r} is not valid: use one of "
                            f"{', '.join(map(str, choices))}")
        kwargs[key] = v
    return cls(**kwargs)


def config_from_nested(d: Mapping[str, Any]) -> TrainConfig:
    """TrainConfig from ``{"data": {...}, "model": {...}, ...}`` (a parsed YAML file)."""
    if not isinstance(d, Mapping):
        raise UserError(f"a config must be a mapping of sections {', '.join(SECTIONS)}")
    sections = {}
    for name, values in d.items():
        if name not in SECTIONS:
            raise UserError(f"unknown config section {name!r}: use {', '.join(SECTIONS)}")
        if values is None:
            values = {}
        if not isinstance(values, Mapping):
            raise UserError(f"config section {name!r} must be a mapping of key: value")
        sections[name] = _build_section(name, SECTIONS[name], values)
    cfg = TrainConfig(**sections)
    check_config(cfg)
    return cfg


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """Flat ``{"section.key": value}`` (tuples as lists), for Tune and MLflow params."""
    out: dict[str, Any] = {}
    for name in SECTIONS:
        for key, value in dataclasses.asdict(getattr(cfg, name)).items():
            out[f"{name}.{key}"] = list(value) if isinstance(value, tuple) else value
    return out


def batch_params(cfg: TrainConfig) -> dict[str, int]:
    """``global_batch`` (data.batch_size, or P x K) and ``worker_batch`` (its share per worker).

    Logged beside the config's params; the worker count of local mode (0) is 1.
    """
    d = cfg.data
    workers = max(1, cfg.run.num_workers)
    return {"global_batch": global_batch_size(d.batch_mode, d.batch_size, d.P, d.K),
            "worker_batch": share_size(d.batch_mode, d.batch_size, d.P, d.K, workers)}


def changed_settings(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``"key: old -> new"`` for every setting of two flat configs that differs.

    Fields marked neutral (they cannot change a reported number: decode
    parallelism, prefetching, checkpoint cadence) are left out. A key missing
    on one side (a config written before the field existed) takes its default.
    """
    defaults = config_to_dict(TrainConfig())
    neutral = {f"{name}.{f.name}" for name, cls in SECTIONS.items()
               for f in dataclasses.fields(cls) if f.metadata.get("neutral")}
    out = []
    for key in sorted(set(defaults) | set(old) | set(new)):
        a, b = old.get(key, defaults.get(key)), new.get(key, defaults.get(key))
        if key not in neutral and json.dumps(a) != json.dumps(b):
            out.append(f"{key}: {a!r} -> {b!r}")
    return out


def _nest(flat: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    nested: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        section, dot, name = str(key).partition(".")
        if not dot or not name:
            raise UserError(f"config key {key!r} must be section.key, e.g. loss.alpha "
                            f"(sections: {', '.join(SECTIONS)})")
        nested.setdefault(section, {})[name] = value
    return nested


def config_from_dict(d: Mapping[str, Any]) -> TrainConfig:
    """Inverse of ``config_to_dict``; missing keys take their defaults."""
    return config_from_nested(_nest(d))


def replace_dotted(cfg: TrainConfig, changes: Mapping[str, Any]) -> TrainConfig:
    """A copy of ``cfg`` with ``{"loss.alpha": 0.01, ...}`` applied and re-checked."""
    flat = config_to_dict(cfg)
    for key in changes:
        if key not in flat:
            _nest({key: None})  # names the section format problem, if any
            section = str(key).partition(".")[0]
            valid = [k for k in flat if k.startswith(section + ".")] or list(SECTIONS)
            raise UserError(f"unknown config key {key}: valid keys are {', '.join(valid)}")
    flat.update(changes)
    return config_from_dict(flat)


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["loss.alpha=0.01", "data.spectra=[rgb,nir]"]`` -> {key: YAML-parsed value}."""
    out = {}
    for item in overrides:
        key, eq, text = item.partition("=")
        if not eq or not key.strip():
            raise UserError(f"override {item!r} must look like section.key=value")
        try:
            out[key.strip()] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            raise UserError(f"override {item!r}: value is not valid YAML ({exc})") from None
    return out


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML preset (None = all defaults) and apply dotted ``key=value`` overrides."""
    nested: Any = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file {p} does not exist (presets are in "
                            "experiments/presets/)")
        try:
            nested = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"config file {p} is not valid YAML: {exc}") from None
    try:
        cfg = config_from_nested(nested)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    return replace_dotted(cfg, parse_overrides(overrides))


def check_config(cfg: TrainConfig) -> None:
    """Cross-field checks that need no manifest; raises one UserError."""
    d, o, r = cfg.data, cfg.optim, cfg.run
    bad = [s for s in d.spectra if s not in SPECTRA]
    if bad or len(set(d.spectra)) != len(d.spectra):
        raise UserError(f"data.spectra={list(d.spectra)}: use distinct names of "
                        f"{', '.join(SPECTRA)}")
    if d.batch_mode == "pk" and d.P * d.K != d.batch_size:
        raise UserError(f"data.batch_size={d.batch_size} but data.P x data.K = {d.P} x {d.K} "
                        f"= {d.P * d.K}: set data.batch_size={d.P * d.K} or change P, K")
    positive = {"data.batch_size": d.batch_size, "data.P": d.P, "data.K": d.K,
                "data.eval_batch_size": d.eval_batch_size, "optim.epochs": o.epochs,
                "run.eval_every": r.eval_every, "run.checkpoint_every": r.checkpoint_every,
                "data.val_query_per_camera": d.val_query_per_camera,
                "data.batches_per_task": d.batches_per_task}
    for key, value in positive.items():
        if value < 1:
            raise UserError(f"{key}={value} must be >= 1")
    if not 0 <= d.modality_dropout < 1:
        raise UserError(f"data.modality_dropout={d.modality_dropout} must be in [0, 1) "
                        "(1 would drop every spectrum; one is always kept)")
    ranges = {"data.flip_prob": (d.flip_prob, 0, 1), "data.erase_prob": (d.erase_prob, 0, 1),
              "loss.label_smoothing": (cfg.loss.label_smoothing, 0, 1)}
    for key, (value, lo, hi) in ranges.items():
        if not lo <= value <= hi:
            raise UserError(f"{key}={value} must be in [{lo}, {hi}]")
    if d.image_size is not None and min(d.image_size) < 8:
        raise UserError(f"data.image_size={list(d.image_size)} must be (H, W) >= 8 pixels")
    if d.val_ids < 0 or (d.val_ids >= 1 and d.val_ids != int(d.val_ids)):
        raise UserError(f"data.val_ids={d.val_ids}: use a fraction in [0, 1) or a whole count")
    if r.num_workers < 0 or r.cpus_per_worker <= 0:
        raise UserError(f"run.num_workers={r.num_workers} must be >= 0 and "
                        f"run.cpus_per_worker={r.cpus_per_worker} > 0")
    share_size(d.batch_mode, d.batch_size, d.P, d.K, max(1, r.num_workers))  # equal shares
    if not d.decode_cpus > 0:  # a 0-CPU task is never limited by a trial's reservation
        raise UserError(f"data.decode_cpus={d.decode_cpus} must be > 0 (e.g. 0.5 or 1)")
    if any(b <= a for a, b in zip(o.milestones, o.milestones[1:])):
        raise UserError(f"optim.milestones={list(o.milestones)} must increase")
    _check_head(cfg)
    _check_ablation(cfg)
    if cfg.model.pretrained_file:  # before Ray starts: a corrupt file fails here, naming it
        from msreid.models.backbones import check_weights_file  # torch + timm: late, keeps this light

        try:
            check_weights_file(cfg.model.pretrained_file)
        except UserError as exc:
            raise UserError(f"model.{exc}") from None


def _check_head(cfg: TrainConfig) -> None:
    from msreid.models import HEADS  # torch + timm: late, keeps importing this file light

    if cfg.model.head not in HEADS:
        raise UserError(f"model.head={cfg.model.head!r} is not valid: use one of "
                        f"{', '.join(HEADS)}")


def _check_ablation(cfg: TrainConfig) -> None:
    from msreid.losses import ABLATIONS, LOSS_TERMS, active_terms  # torch: late, keeps this file light

    name = cfg.loss.ablation
    if name not in ABLATIONS:
        raise UserError(f"loss.ablation={name!r} is not valid: use one of "
                        f"{', '.join(ABLATIONS)}")
    for term in LOSS_TERMS.values():
        for key, option in term.config.items():
            valid, value = term.choices.get(option), getattr(cfg.loss, key)
            if valid is not None and value not in (None, *valid):
                raise UserError(f"loss.{key}={value!r}: use {' or '.join(valid)} (or null for "
                                "the ablation's)")
    if cfg.loss.alpha is not None and cfg.loss.alpha < 0:
        raise UserError(f"loss.alpha={cfg.loss.alpha} must be >= 0")
    if cfg.optim.schedule_offset < 0:
        raise UserError(f"optim.schedule_offset={cfg.optim.schedule_offset} must be >= 0")
    n = len(cfg.data.spectra)
    if name == "one_stream" and n != 1:
        raise UserError(f"loss.ablation=one_stream trains one spectrum: set data.spectra to "
                        f"one of {', '.join(SPECTRA)} (got {list(cfg.data.spectra) or 'all'})")
    if name != "one_stream" and n == 1:
        raise UserError(f"loss.ablation={name} needs >= 2 spectra, data.spectra="
                        f"{list(cfg.data.spectra)}: use loss.ablation=one_stream")
    # dropout leaves a dropped stream out of the per-stream terms only (one stream: none to drop)
    terms = [LOSS_TERMS[t] for t in active_terms(loss_kwargs(cfg.loss))]
    if cfg.data.modality_dropout > 0 and (n == 1 or not all(t.per_stream for t in terms)):
        per_stream = ", ".join(t.symbol for t in LOSS_TERMS.values() if t.per_stream)
        others = " / ".join(t.symbol for t in LOSS_TERMS.values() if not t.per_stream)
        raise UserError(f"data.modality_dropout={cfg.data.modality_dropout} with loss.ablation="
                        f"{name}: dropout leaves a dropped stream out of the per-stream terms "
                        f"({per_stream}) only; {others} have no rule for a missing stream yet. "
                        "Use loss.ablation=msn or data.modality_dropout=0")


def effective_val_ids(cfg: TrainConfig) -> float:
    """The validation ids actually held out: data.val_ids, or 0 under run.selection=final."""
    return 0.0 if cfg.run.selection == "final" else cfg.data.val_ids


def loss_kwargs(cfg: LossConfig) -> dict[str, Any]:
    """Keyword arguments of ``msreid.losses.compute_losses`` for this config: the ablation's,
    then each term's config fields (``LossTerm.config``, e.g. alpha -> hsc_alpha) where the
    term is on and the field is set."""
    from msreid.losses import ABLATIONS, LOSS_TERMS, active_terms

    kwargs = dict(ABLATIONS[cfg.ablation])
    for name, term in LOSS_TERMS.items():
        if term.enabled_by is not None and getattr(cfg, term.enabled_by[0]):
            kwargs[term.switch] = getattr(cfg, term.enabled_by[1])
        if name not in active_terms(kwargs):
            continue
        for key, option in term.config.items():
            if getattr(cfg, key) is not None:
                kwargs[option] = getattr(cfg, key)
    return kwargs


def check_against_manifest(cfg: TrainConfig, manifest_spectra: Sequence[str]) -> tuple[str, ...]:
    """The spectra to train on (cfg's, or the manifest's when empty); UserError if absent."""
    spectra = cfg.data.spectra or tuple(manifest_spectra)
    missing = [s for s in spectra if s not in manifest_spectra]
    if missing:
        raise UserError(f"data.spectra={list(spectra)}: {', '.join(missing)} not in the "
                        f"manifest {cfg.data.manifest} (it has {', '.join(manifest_spectra)})")
    if cfg.loss.ablation != "one_stream" and len(spectra) < 2:
        raise UserError(f"loss.ablation={cfg.loss.ablation} needs >= 2 spectra; the manifest "
                        f"{cfg.data.manifest} has {list(manifest_spectra)}")
    return tuple(s for s in SPECTRA if s in spectra)
