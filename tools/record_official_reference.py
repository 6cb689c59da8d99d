"""Record the authors' released Baseline6 as the oracle of tests/test_models_official_reference.py.

Runs THEIR code (a checkout of github.com/ttaalle/multi-modal-vehicle-Re-ID, given by
path; nothing of it is copied here) on the batch of ``tests/official_reference.py``:
their ``Baseline6`` built by their ``modeling.build_model`` from their
``config/defaults.py`` + ``softmax_triplet.yml`` (ResNet-50, last stride 1, BN-neck),
their ``make_loss`` and the update step of their ``engine/trainer.py``. Every
parameter and buffer is set from the name-seeded generator under our name for
it (the mapping below), so the fixture holds no weights: the input seed and
their outputs. It also prints how far our model is from theirs, with their
stem and with timm's standard one.

Their code needs ``yacs`` and ``pytorch-ignite`` (not msreid dependencies):

    pip install --target /tmp/oracle-deps --no-deps yacs pytorch-ignite
    PYTHONPATH=platform:/tmp/oracle-deps python tools/record_official_reference.py \
        --authors /path/to/multi-modal-vehicle-Re-ID

Shims, applied at run time (their files are not edited):
- ``Tensor.addmm_(beta, alpha, mat1, mat2)``, the positional form their
  triplet loss uses, was removed from torch; it is mapped to keywords.
- ``utils.reid_metric`` (evaluation metrics, imported by their trainer module)
  is replaced by an empty module: the update step does not use it.
- The optimizer passed to their trainer only zeroes gradients (no step), so the
  gradients of the one update stay readable.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import official_reference as ref  # noqa: E402 - our side, shared with the test

STREAMS = {"visible_net": "rgb", "nir_net": "nir"}  # their stream modules -> our spectra


def our_name(theirs: str) -> str | None:
    """Our state-dict name for one of Baseline6's, or None for their unused per-stream classifier.

    visible_net.base.* -> streams.rgb.backbone.*  (same ResNet key names as timm's)
    visible_net.conv1.weight -> streams.rgb.cam_conv.weight  (the 1x1 CAM conv)
    visible_net.bottleneck.* -> streams.rgb.neck.*  (the BN-neck)
    classifier.* -> shared_classifier.*  (one classifier with bias for both streams)
    """
    if theirs.startswith("classifier."):
        return "shared_" + theirs
    stream, _, rest = theirs.partition(".")
    if stream not in STREAMS:
        raise KeyError(f"unmapped Baseline6 key {theirs!r}")
    prefix = f"streams.{STREAMS[stream]}."
    if rest.startswith("base."):
        return prefix + "backbone." + rest.removeprefix("base.")
    if rest == "conv1.weight":
        return prefix + "cam_conv.weight"
    if rest.startswith("bottleneck."):
        return prefix + "neck." + rest.removeprefix("bottleneck.")
    if rest.startswith("classifier."):
        return None
    raise KeyError(f"unmapped Baseline6 key {theirs!r}")


def apply_shims() -> None:
    """Run-time compatibility of their 2019 code with current torch (see the module docstring)."""
    addmm_ = torch.Tensor.addmm_

    def old_addmm_(self, *args, **kwargs):
        if len(args) == 4 and not torch.is_tensor(args[0]):
            beta, alpha, mat1, mat2 = args
            return addmm_(self, mat1, mat2, beta=beta, alpha=alpha)
        return addmm_(self, *args, **kwargs)

    torch.Tensor.addmm_ = old_addmm_
    metrics = types.ModuleType("utils.reid_metric")
    metrics.R1_mAP = metrics.R1_mAP_reranking = None
    sys.modules["utils.reid_metric"] = metrics


class ZeroGradOnly:
    """Stands in for their optimizer: zero_grad() as theirs, step() leaves the weights."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def zero_grad(self) -> None:
        self.model.zero_grad(set_to_none=True)

    def step(self) -> None:
        pass


def their_model_and_loss(authors: Path):
    sys.path.insert(0, str(authors))
    apply_shims()
    from config import cfg
    from layers import make_loss
    from modeling import build_model

    cfg.merge_from_file(str(authors / "softmax_triplet.yml"))
    cfg.MODEL.PRETRAIN_CHOICE = "self"  # no ImageNet file: every weight is seeded below
    cfg.freeze()
    model = build_model(cfg, ref.NUM_CLASSES).to(ref.DTYPE)
    return cfg, model, make_loss(cfg, ref.NUM_CLASSES)


def seed_theirs(model: torch.nn.Module) -> list[str]:
    """Seed Baseline6 under our names; returns their keys that have no counterpart."""
    unmapped = [k for k in model.state_dict() if our_name(k) is None]
    ref.fill_seeded(model, lambda k: our_name(k) or "authors-only:" + k)
    return unmapped


def record(authors: Path) -> tuple[dict[str, torch.Tensor], list[str], str]:
    """(their outputs, our names of the gradient probes' rows, their test script's error)."""
    cfg, model, loss_fn = their_model_and_loss(authors)
    from engine.trainer import create_supervised_trainer

    ours = ref.our_model(stem_relu=False)
    mapped = {our_name(k) for k in model.state_dict()} - {None}
    assert mapped == set(ours.state_dict()), "the name mapping must cover both models exactly"
    unmapped = seed_theirs(model)
    x, y = ref.images(), ref.labels()
    rgb, nir = x["rgb"], x["nir"]

    model.eval()
    with torch.no_grad():
        test_feature = model(rgb, nir, nir)  # their forward takes 3 inputs; the third is unused

    cams = {}
    for stream in STREAMS:
        getattr(model, stream).conv1.register_forward_hook(
            lambda _m, _i, out, s=stream: cams.__setitem__(s, out.detach().clone()))
    outputs = {}
    model.register_forward_hook(lambda _m, _i, out: outputs.__setitem__("train", out))
    trainer = create_supervised_trainer(model, ZeroGradOnly(model), loss_fn, device=None)
    loss, _acc = trainer._process_function(trainer, (rgb, nir, nir, y))
    score1, feat1, score2, feat2, fused, _ = outputs["train"]

    params = dict(model.named_parameters())
    theirs_of = {our_name(k): k for k in params if our_name(k) is not None}
    assert all(params[k].grad is None for k in unmapped if k in params), \
        "their per-stream classifiers are expected to be unused"
    names = ref.our_param_names(ours)
    grads = [(n, params[theirs_of[n]].grad) for n in names]
    assert all(g is not None for _, g in grads), "every mapped parameter gets a gradient"
    _, probes = ref.grad_probes(grads)
    bn = model.get_submodule("visible_net.base.bn1")
    assert ref.PROBE_BN == "streams.rgb.backbone.bn1"
    return {
        "test_feature": test_feature,
        "logits": torch.stack([score1, score2]).detach(),
        "necked": torch.stack([feat1, feat2]).detach(),
        "cams": torch.stack([cams["visible_net"], cams["nir_net"]]),
        "fused": fused.detach(),
        "loss": torch.tensor([loss], dtype=ref.DTYPE),
        "grad_probes": probes,
        "probe_bn_running_mean": bn.running_mean.detach().clone(),
        "probe_bn_running_var": bn.running_var.detach().clone(),
        "probe_bn_num_batches_tracked": bn.num_batches_tracked.detach().clone().reshape(1),
    }, names, their_test_script_error(model)


def their_test_script_error(model: torch.nn.Module) -> str:
    """What their test.py's evaluator (engine/inference.py) does with Baseline6: the error text.

    It calls ``model(data1)``; Baseline6's forward takes three inputs.
    """
    from engine.inference import create_supervised_evaluator

    evaluator = create_supervised_evaluator(model, metrics={}, device=None)
    x = ref.images()["rgb"][:1]
    try:
        evaluator._process_function(evaluator, (x, x, x, torch.tensor([0]), torch.tensor([0])))
    except TypeError as exc:
        return f"TypeError: {exc}"
    return "ran"


def setup_problem(authors: Path) -> str | None:
    """Why the authors' code cannot be run from ``authors``, or None."""
    if not (authors / "modeling" / "baseline.py").is_file():
        return (f"--authors {str(authors)!r} is not a checkout of their code (no "
                "modeling/baseline.py): git clone https://github.com/ttaalle/multi-modal-vehicle-Re-ID")
    missing = [m for m in ("yacs", "ignite") if importlib.util.find_spec(m) is None]
    if missing:
        return (f"their code needs {', '.join(missing)}: pip install --target DIR --no-deps yacs "
                "pytorch-ignite, then add DIR to PYTHONPATH")
    return None


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--authors", type=Path, required=True,
                        help="checkout of ttaalle/multi-modal-vehicle-Re-ID (their released code)")
    parser.add_argument("--out", type=Path, default=ref.FIXTURE,
                        help="fixture to write (default: %(default)s)")
    args = parser.parse_args(argv)
    problem = setup_problem(args.authors)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from safetensors.torch import save_file

    theirs, names, test_script = record(args.authors.resolve())
    commit = subprocess.run(["git", "-C", str(args.authors), "rev-parse", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "unknown"
    meta = ref.fixture_metadata(
        authors_commit=commit, torch=torch.__version__, P=ref.P, K=ref.K,
        num_classes=ref.NUM_CLASSES, size=list(ref.SIZE), input_seed=ref.INPUT_SEED,
        grad_param_names=names, their_test_script=test_script,
        loss_terms="their trainer: 3 x (CE + triplet 0.3) + 0.001 * (32 - sum_b "
                   "cos(S_rgb, S_nir)), IF_LABELSMOOTH 'yes' (= off)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in theirs.items()}, str(args.out), metadata=meta)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes), their commit {commit}")
    print(f"their test script's evaluator on Baseline6: {test_script}")
    for stem_relu in (False, True):
        ours = ref.our_outputs(ref.our_model(stem_relu=stem_relu))
        print(f"ours with stem_relu={stem_relu}: max |ours - theirs| / max |theirs|")
        for key in ("logits", "necked", "cams", "fused", "test_feature", "grad_probes"):
            print(f"  {key:14s} {relative(ours[key], theirs[key]):.3g}")
        batch = ref.P * ref.K
        print(f"  {'loss':14s} ours {ours['loss'].item():.10f} + 0.001 * (32 - {batch}) vs "
              f"theirs {theirs['loss'].item():.10f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
