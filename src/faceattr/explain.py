"""Grad-CAM for the multitask FaceNet: which part of a face drove one head's decision.

A thin nn.Module picks one output of the model (a head's logits or the decoded age) so that
pytorch-grad-cam can explain it at one block (``LAYER``); hooks live in a context manager and are removed
even after an error. Also the randomisation sanity check (Adebayo et al., 2018) and the
``faceattr explain`` job: overlay grids, mean maps per class and for right vs wrong answers.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from scipy.stats import spearmanr
from torch import Tensor, nn

from faceattr import age as agemod
from faceattr.atomic import write_json
from faceattr.checkpoint import age_spec, load_checkpoint, model_from_checkpoint
from faceattr.dataset import FaceData
from faceattr.evaluation import find_data_dir, load_split_data
from faceattr.figures import new_figure, save_figure, show_image
from faceattr.inputerror import InputError
from faceattr.labels import CLASS_NAMES
from faceattr.model import FaceNet
from faceattr.preprocess import to_input
from faceattr.runs import run_folder
from faceattr.tasks import AgeSpec, decode_age, predicted_bin
from faceattr.train import predict_outputs

# layer2 by default: at 48x48 the s2pool stem leaves layer4 a 2x2 map whose Grad-CAM fails a
# mirror check (it stays on one side of the picture: most likely a grid artefact). layer1-3 all
# pass it partly; layer2 is the trade-off between finer maps (layer1) and steadier ones under
# input noise (layer3) (bench/gradcam_layers.py, results/gradcam_layers.json).
LAYER = "layer2"
# Cascading randomisation (Adebayo et al., 2018): re-initialise from the output backwards.
CASCADE = ("heads", "layer4", "layer3", "layer2", "layer1", "stem")
TRUNK = ("stem", "layer1", "layer2", "layer3", "layer4")  # FaceNet's blocks, input to output
AGE_WRONG_YEARS = 10  # an age "error" in grids and clusters: off by more than this
AGE_RIGHT_YEARS = 5  # an age "correct": within this (the CS@5 criterion)


class HeadOutput(nn.Module):
    """One output of a FaceNet as a single tensor, as Grad-CAM expects: a head's logits (B, K)
    (e.g. ``gender``, ``ethnicity``, ``age_bin``) or, for ``output="age"``, the age (B,) as
    ``faceattr.tasks.decode_age`` gives it (differentiable: soft routing for the two-stage head)."""

    def __init__(self, model: FaceNet, output: str, age: AgeSpec | None = None) -> None:
        super().__init__()
        if output == "age" and age is None:
            raise ValueError("output 'age' needs the run's AgeSpec")
        if output != "age" and output not in model.heads:
            raise ValueError(f"the model has no head {output!r}; it has {', '.join(model.heads)}")
        self.model, self.output, self.age = model, output, age

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        return decode_age(out, self.age)["age"] if self.output == "age" else out[self.output]


class RegressionTarget:
    """Grad-CAM target for a scalar output such as the age: the value itself (``sign=1``), so
    the map shows what pushes the prediction up; ``sign=-1`` shows what pulls it down."""

    def __init__(self, sign: float = 1.0) -> None:
        self.sign = sign

    def __call__(self, output: Tensor) -> Tensor:
        return self.sign * output


@contextlib.contextmanager
def grad_cam(model: FaceNet, output: str, age: AgeSpec | None = None, layer: str = LAYER) -> Iterator[GradCAM]:
    """A pytorch-grad-cam ``GradCAM`` on one output of ``model`` at ``layer``.

    On exit (also after an error) the hooks are removed, gradients cleared and the model's
    train/eval mode restored. GradCAM's own ``__exit__`` is not used: it swallows IndexError
    (e.g. a class index past the head), which must reach the caller.
    """
    was_training = model.training
    # Only the gradient at ``layer`` is needed: blocks below it are frozen meanwhile, so the
    # backward pass stops there (about half the cost of a full one at 48x48).
    below = [p for name in TRUNK[: TRUNK.index(layer)] for p in getattr(model, name).parameters()]
    flags = [p.requires_grad for p in below]
    for p in below:
        p.requires_grad_(False)
    cam = GradCAM(HeadOutput(model, output, age), [getattr(model, layer)])
    try:
        yield cam
    finally:
        cam.activations_and_grads.release()
        for p, flag in zip(below, flags):
            p.requires_grad_(flag)
        model.zero_grad(set_to_none=True)
        model.train(was_training)


def compute_cams(
    model: FaceNet,
    images: np.ndarray,
    mean: float,
    std: float,
    output: str,
    classes: np.ndarray | None = None,
    age: AgeSpec | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 512,
    layer: str = LAYER,
) -> np.ndarray:
    """Grad-CAM maps for uint8 faces (N, H, W[, C]) -> float32 (N, H, W), each scaled to [0, 1].

    Class outputs explain ``classes`` (N,) (default: the predicted class of each face); the
    ``age`` output explains the predicted age (a regression target: what raises it).
    """
    model = model.to(device)
    if output != "age" and classes is None:
        classes = predicted_classes(model, images, mean, std, output, device, batch_size)
    maps = []
    with grad_cam(model, output, age, layer) as cam:
        for s in range(0, len(images), batch_size):
            x = to_input(torch.from_numpy(images[s : s + batch_size]).to(device), mean, std)
            if output == "age":
                targets = [RegressionTarget() for _ in range(len(x))]
            else:
                targets = [ClassifierOutputTarget(int(c)) for c in classes[s : s + batch_size]]
            maps.append(cam(input_tensor=x, targets=targets))
    if not maps:
        return np.zeros((0, *images.shape[1:3]), np.float32)
    return np.clip(np.concatenate(maps).astype(np.float32), 0.0, 1.0)


@torch.inference_mode()
def predicted_classes(
    model: FaceNet, images: np.ndarray, mean: float, std: float, output: str, device="cpu", batch_size: int = 512
) -> np.ndarray:
    """Argmax class (N,) of one head for uint8 faces, in eval mode (the mode is restored)."""
    was_training = model.training
    model.eval()
    parts = [
        model(to_input(torch.from_numpy(images[s : s + batch_size]).to(device), mean, std))[output].argmax(1).cpu()
        for s in range(0, len(images), batch_size)
    ]
    model.train(was_training)
    return torch.cat(parts).numpy() if parts else np.zeros(0, np.int64)


def spearman_maps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-map Spearman rank correlation (N,) between two stacks of maps (N, H, W); a constant
    map has no ranking to share, so its correlation counts as 0."""
    out = np.zeros(len(a))
    for i, (x, y) in enumerate(zip(a.reshape(len(a), -1), b.reshape(len(b), -1))):
        if np.ptp(x) > 0 and np.ptp(y) > 0:
            out[i] = spearmanr(x, y).statistic
    return out


def randomised_copy(model: FaceNet, blocks: Sequence[str], seed: int = 0) -> FaceNet:
    """A copy of ``model`` whose ``blocks`` (names from CASCADE) are re-initialised with
    PyTorch's default initialisation (BatchNorm running statistics reset too)."""
    clone = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in blocks:
            for m in getattr(clone, name).modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
    return clone


def sanity_check(
    model: FaceNet,
    images: np.ndarray,
    mean: float,
    std: float,
    output: str = "gender",
    age: AgeSpec | None = None,
    seed: int = 0,
    noise: float = 4.0,
    device: torch.device | str = "cpu",
    layer: str = LAYER,
) -> dict:
    """Model-randomisation test: Grad-CAM maps that survive re-initialising the weights explain
    the input, not the model. Maps of the trained model are compared (Spearman, mean over faces)
    with maps after cascading re-initialisation (heads, then layer4, ... down to the stem: the
    last step is full randomisation), and, as the yardstick, with the trained model's maps of
    the same faces plus Gaussian noise of ``noise`` grey levels. Class outputs keep the trained
    model's predicted class as the target throughout.

    Returns JSON-ready numbers plus ``maps`` (name -> (N, H, W)) for a figure.
    """
    model = model.to(device).eval()
    classes = None if output == "age" else predicted_classes(model, images, mean, std, output, device)
    trained = compute_cams(model, images, mean, std, output, classes, age, device, layer=layer)
    rng = np.random.default_rng(seed)
    noisy = np.clip(images + rng.normal(0, noise, images.shape), 0, 255).round().astype(np.uint8)
    reference = spearman_maps(trained, compute_cams(model, noisy, mean, std, output, classes, age, device, layer=layer))
    maps = {"trained": trained}
    steps = []
    for i, block in enumerate(CASCADE):
        clone = randomised_copy(model, CASCADE[: i + 1], seed)
        maps[f"random to {block}"] = compute_cams(clone, images, mean, std, output, classes, age, device, layer=layer)
        rho = spearman_maps(trained, maps[f"random to {block}"])
        steps.append({"randomised": list(CASCADE[: i + 1]), "spearman_mean": float(rho.mean())})
    # Mirror check: the model was trained on flipped faces too, so a faithful map of a mirrored
    # face is the mirrored map; a map that stays put shows the grid, not the face.
    mirrored = np.ascontiguousarray(images[:, :, ::-1])
    back = compute_cams(model, mirrored, mean, std, output, classes, age, device, layer=layer)[:, :, ::-1]
    mirror = spearman_maps(trained, np.ascontiguousarray(back))
    return {
        "output": output,
        "layer": layer,
        "mirror_consistency": float(mirror.mean()),
        "n": len(images),
        "noise_grey_levels": noise,
        "trained_vs_noisy_input": float(reference.mean()),
        "cascade": steps,
        "full_randomisation": steps[-1]["spearman_mean"],
        "maps": maps,
    }


@torch.no_grad()
def layer_cells(model: FaceNet, layer: str, channels: int, size: int, device="cpu") -> int:
    """Side of ``layer``'s map for a size x size input: the resolution Grad-CAM has there."""
    if layer not in TRUNK[1:]:
        raise InputError(f"--layer {layer!r}: expected one of {', '.join(TRUNK[1:])}")
    x = torch.zeros(1, channels, size, size, device=device)
    was_training = model.training
    model.eval()
    for name in TRUNK[: TRUNK.index(layer) + 1]:
        x = getattr(model, name)(x)
    model.train(was_training)
    return int(x.shape[-1])


def load_run(run: str | Path, device: torch.device | str = "cpu") -> tuple[dict, FaceNet, AgeSpec | None]:
    """(checkpoint, model in eval mode, AgeSpec or None) of a run folder or checkpoint file."""
    ckpt = load_checkpoint(run)
    return ckpt, model_from_checkpoint(ckpt, device), age_spec(ckpt)


def split_faces(data_dir: str | Path | None, split: str, ckpt: dict, run: str | Path = ".") -> FaceData:
    """The faces of one split of a prepared folder (None: the one run ``run`` was trained on),
    checked by ``faceattr.evaluation.load_split_data`` (its split must be the model's)."""
    if data_dir is None:
        data_dir = find_data_dir(run_folder(run), ckpt)
    return load_split_data(data_dir, ckpt, split, needs=()).part(split)


def read_images(paths: Sequence[str | Path], size: int, gray: bool) -> np.ndarray:
    """Image files -> uint8 faces (N, size, size[, 3]), converted and area-resized as at prepare."""
    from faceattr.readers import decode_image

    faces = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise InputError(f"{path}: no such image file")
        try:
            faces.append(decode_image(path.read_bytes(), size, gray))
        except Exception as e:  # Pillow raises many types for a bad file; name the file instead
            raise InputError(f"{path}: not a readable image ({type(e).__name__})") from None
    return np.stack(faces)


def _rgb(face: np.ndarray) -> np.ndarray:
    x = face.astype(np.float32) / 255
    return np.repeat(x[..., None], 3, axis=2) if x.ndim == 2 else x


def overlay(face: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """uint8 face (H, W[, 3]) and map (H, W) in [0, 1] -> RGB uint8 overlay (H, W, 3)."""
    return show_cam_on_image(_rgb(face), cam, use_rgb=True, image_weight=0.55)


def plot_grid(faces: np.ndarray, cams: np.ndarray, captions: Sequence[str], title: str, path: Path, per_row=4) -> Path:
    """Pairs of (face, Grad-CAM overlay) with a caption each, ``per_row`` pairs a row."""
    n = len(faces)
    rows = max(1, -(-n // per_row))
    fig = new_figure(2 * per_row * 1.05, rows * 1.35 + 0.4)
    fig.suptitle(title, fontsize=9)
    for i in range(rows * per_row):
        a, b = fig.add_subplot(rows, 2 * per_row, 2 * i + 1), fig.add_subplot(rows, 2 * per_row, 2 * i + 2)
        a.axis("off"), b.axis("off")
        if i < n:
            show_image(a, faces[i])
            show_image(b, overlay(faces[i], cams[i]), captions[i])
    return save_figure(fig, path)


def plot_mean_maps(groups: list[tuple[str, np.ndarray, np.ndarray]], title: str, path: Path) -> Path:
    """One panel per group (name, faces (n, H, W), maps (n, H, W)): the mean map over the
    group's mean face; empty groups are shown blank."""
    fig = new_figure(1.45 * len(groups), 1.9)
    fig.suptitle(title, fontsize=9)
    for i, (name, faces, cams) in enumerate(groups):
        ax = fig.add_subplot(1, len(groups), i + 1)
        ax.axis("off")
        if len(faces):
            mean_face = faces.astype(np.float32).mean(0).round().astype(np.uint8)
            show_image(ax, overlay(mean_face, cams.mean(0)), f"{name}\n(n={len(faces)})")
        else:
            ax.set_title(f"{name}\n(n=0)", fontsize=7)
    return save_figure(fig, path)


def plot_sanity(faces: np.ndarray, maps: dict[str, np.ndarray], title: str, path: Path) -> Path:
    """Rows: faces; columns: the trained model's map, then each randomisation step."""
    names = list(maps)
    fig = new_figure(1.15 * (len(names) + 1), 1.2 * len(faces) + 0.5)
    fig.suptitle(title, fontsize=9)
    for r, face in enumerate(faces):
        ax = fig.add_subplot(len(faces), len(names) + 1, r * (len(names) + 1) + 1)
        show_image(ax, face, "face" if r == 0 else "")
        for c, name in enumerate(names):
            ax = fig.add_subplot(len(faces), len(names) + 1, r * (len(names) + 1) + c + 2)
            show_image(ax, overlay(face, maps[name][r]), name if r == 0 else "", fontsize=6)
    return save_figure(fig, path)


QUADRANTS = ("upper left", "upper right", "lower left", "lower right")  # as seen in the image


def heat_shares(cams: np.ndarray) -> dict[str, float]:
    """Where the heat lies, averaged over maps (N, H, W): the share in the upper half (eyes and
    brows on aligned faces) and in each quadrant. Coarse on purpose: the maps have few cells."""
    total = cams.sum((1, 2)) + 1e-12
    h, w = cams.shape[1:]
    share = {"upper_half": float((cams[:, : h // 2].sum((1, 2)) / total).mean())}
    for name, (rows, cols) in zip(QUADRANTS, [(r, c) for r in (0, 1) for c in (0, 1)]):
        part = cams[:, rows * h // 2 : (rows + 1) * h // 2, cols * w // 2 : (cols + 1) * w // 2]
        share[name] = float((part.sum((1, 2)) / total).mean())
    return share


def _head_plan(model: FaceNet, age: AgeSpec | None) -> list[str]:
    heads = [t for t in CLASS_NAMES if t in model.heads]
    return heads + (["age"] if age is not None else [])


def _cam_output(head: str, age: AgeSpec | None) -> str:
    # The two-stage head decides by its bin classifier: explain the predicted bin. The other
    # age heads are explained through the age value they output.
    if head == "age":
        return "age_bin" if age.head == "two_stage" else "age"
    return head


def _classes(output: str, pred: dict[str, np.ndarray], age: AgeSpec | None) -> np.ndarray | None:
    # The predicted class (or age bin) each map explains, from predictions already made, so
    # compute_cams need not run the model once more to find it; None for a regression output.
    if output == "age_bin":
        return predicted_bin(pred, age)
    return pred[output].argmax(1) if output in CLASS_NAMES else None


def cam_overlays(
    model: FaceNet,
    faces: np.ndarray,
    mean: float,
    std: float,
    age: AgeSpec | None,
    size: int,
    device="cpu",
    layer: str = LAYER,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Grad-CAM of each head's own prediction for uint8 faces (N, H, W[, C]): per head, RGB
    overlays (N, size, size, 3) uint8 (face and map enlarged with bicubic filtering) and a flag
    (N,) for empty maps (no region of the face raised that output: all gradients pointed down)."""
    from PIL import Image

    pred = predict_outputs(model, faces, mean, std, device, age)
    out = {}
    for head in _head_plan(model, age):
        output = _cam_output(head, age)
        cams = compute_cams(model, faces, mean, std, output, _classes(output, pred, age), age, device, layer=layer)
        images = np.stack(
            [
                np.asarray(Image.fromarray(overlay(f, c)).resize((size, size), Image.Resampling.BICUBIC))
                for f, c in zip(faces, cams)
            ]
        )
        out[head] = (images, cams.reshape(len(cams), -1).max(1) <= 1e-6)
    return out


def explain_images(
    run: str | Path,
    images: Sequence[str | Path],
    out: str | Path | None = None,
    device="cpu",
    log=print,
    layer: str = LAYER,
) -> dict:
    """Grad-CAM of every head for a few image files (no labels): one grid, plus index.json, in
    ``out`` (default RUN/explain/images, apart from the test-set explanation the report shows)."""
    if out is None:
        out = run_folder(run) / "explain" / "images"
    ckpt, model, age = load_run(run, device)
    pre = ckpt["preprocessing"]
    faces = read_images(images, pre["size"], pre["channels"] == 1)
    pred = predict_outputs(model, faces, pre["mean"], pre["std"], device, age)
    heads = _head_plan(model, age)
    out = Path(out)
    cams, captions = [], []
    for head in heads:
        output = _cam_output(head, age)
        classes = _classes(output, pred, age)
        cams.append(compute_cams(model, faces, pre["mean"], pre["std"], output, classes, age, device, layer=layer))
        captions.append([_pred_text(head, pred, i, age) for i in range(len(faces))])
    fig = new_figure(1.3 * (len(heads) + 1), 1.4 * len(faces) + 0.4)
    for r, face in enumerate(faces):
        show_image(
            fig.add_subplot(len(faces), len(heads) + 1, r * (len(heads) + 1) + 1), face, Path(images[r]).name[:18]
        )
        for c in range(len(heads)):
            ax = fig.add_subplot(len(faces), len(heads) + 1, r * (len(heads) + 1) + c + 2)
            show_image(ax, overlay(face, cams[c][r]), captions[c][r])
    save_figure(fig, out / "images.png")
    index = {
        "title": "Grad-CAM",
        "text": [f"{len(faces)} image(s) explained at {layer}; heat = evidence for the predicted class / age"],
        "figures": [{"path": "images.png", "caption": "each image with the Grad-CAM of every head's prediction"}],
    }
    write_json(index, out / "index.json")
    log(f"wrote {out / 'images.png'} and {out / 'index.json'}")
    return index


def _pred_text(head: str, pred: dict, i: int, age: AgeSpec | None) -> str:
    if head == "age":
        return f"{head} {pred['age'][i]:.0f}"
    k = int(pred[head][i].argmax())
    return f"{CLASS_NAMES[head][k]} {pred[head][i, k]:.2f}"


def explain_run(
    run: str | Path,
    data_dir: str | Path | None = None,
    out: str | Path | None = None,
    split: str = "test",
    n_errors: int = 16,
    n_correct: int = 16,
    sanity_faces: int = 64,
    seed: int = 0,
    device: torch.device | str = "cpu",
    log=print,
    layer: str = LAYER,
) -> dict:
    """Grad-CAM of every head on one split (at ``layer``): grids of ``n_errors`` misclassified (the most
    confident mistakes; for age the largest errors > 10 years) and ``n_correct`` correct faces
    (a seeded random draw), mean maps per true class and for right vs wrong, the randomisation
    sanity check, and ``index.json`` (title, one-line findings, figures). Returns the index."""
    if n_errors < 0 or n_correct < 0:
        raise InputError(f"--errors and --correct must be >= 0, got {n_errors} and {n_correct}")
    if out is None:
        out = run_folder(run) / "explain"
    out = Path(out)
    ckpt, model, age = load_run(run, device)
    part = split_faces(data_dir, split, ckpt, run)
    mean, std = ckpt["preprocessing"]["mean"], ckpt["preprocessing"]["std"]
    pred = predict_outputs(model, part.images, mean, std, device, age)
    rng = np.random.default_rng(seed)
    stem = model.stem_name
    cell = layer_cells(model, layer, part.channels, part.size, device)
    text = [
        f"Grad-CAM at {layer} on {len(part)} {split} faces; its map is {cell}x{cell} cells here (stem {stem}), "
        f"upsampled to {part.size}x{part.size}: it locates a region of the face, not a single feature"
    ]
    figures, findings = [], {}
    for head in _head_plan(model, age):
        output = _cam_output(head, age)
        if head == "age":
            truth, guess = part.age.astype(float), pred["age"]
            wrong = np.abs(guess - truth) > AGE_WRONG_YEARS
            right = np.abs(guess - truth) <= AGE_RIGHT_YEARS
            edges = np.asarray(age.edges)
            group_of, group_names = agemod.age_to_bin(truth, edges), agemod.bin_labels(edges)
            classes = _classes(output, pred, age)
            severity = np.abs(guess - truth)
            captions = [f"pred {g:.0f} / true {t:.0f}" for g, t in zip(guess, truth)]
            explained = "the predicted age bin" if output == "age_bin" else "the predicted age (what raises it)"
        else:
            truth = getattr(part, head).astype(np.int64)
            classes = pred[head].argmax(1)
            known = truth >= 0
            wrong, right = known & (classes != truth), known & (classes == truth)
            group_of, group_names = truth, list(CLASS_NAMES[head])
            severity = pred[head].max(1)
            names = CLASS_NAMES[head]
            captions = [
                f"pred {names[c]} {p:.2f}\ntrue {names[t] if t >= 0 else '?'}"
                for c, p, t in zip(classes, severity, truth)
            ]
            explained = "the predicted class"
        log(f"{head}: Grad-CAM of {len(part)} faces ...")
        cams = compute_cams(model, part.images, mean, std, output, classes, age, device, layer=layer)

        err_idx = np.flatnonzero(wrong)[np.argsort(-severity[wrong], kind="stable")][:n_errors]
        ok_pool = np.flatnonzero(right)
        ok_idx = np.sort(rng.choice(ok_pool, min(n_correct, len(ok_pool)), replace=False))
        for kind, idx, what in (
            ("errors", err_idx, "largest mistakes" if head == "age" else "most confident mistakes"),
            ("correct", ok_idx, "random correct predictions"),
        ):
            if len(idx) == 0:
                continue
            name = f"{head}_{kind}.png"
            plot_grid(
                part.images[idx],
                cams[idx],
                [captions[i] for i in idx],
                f"{head}: {len(idx)} {what} ({split}); heat = evidence for {explained}",
                out / name,
            )
            figures.append({"path": name, "caption": f"{head}: {what}, face and Grad-CAM overlay ({explained})"})

        groups = [(g, part.images[group_of == k], cams[group_of == k]) for k, g in enumerate(group_names)]
        groups += [("correct", part.images[right], cams[right]), ("wrong", part.images[wrong], cams[wrong])]
        name = f"{head}_mean_maps.png"
        plot_mean_maps(groups, f"{head}: mean Grad-CAM per true class, and for correct vs wrong ({split})", out / name)
        figures.append({"path": name, "caption": f"{head}: mean map per true class and for correct vs wrong answers"})
        findings[head] = _findings(head, cams, right, wrong)
        text.append(findings[head]["line"])

    sanity_head = next(h for h in _head_plan(model, age))
    pick = np.sort(rng.choice(len(part), min(sanity_faces, len(part)), replace=False))
    check = sanity_check(
        model, part.images[pick], mean, std, _cam_output(sanity_head, age), age, seed, device=device, layer=layer
    )
    text.append(_sanity_line(check, sanity_head))
    spread = np.linspace(0, len(pick) - 1, min(6, len(pick))).round().astype(int)  # faces across the split
    shown = {k: v[spread] for k, v in check.pop("maps").items()}
    plot_sanity(
        part.images[pick[spread]],
        shown,
        f"{sanity_head}: maps of the trained model, then after re-initialising from the heads down",
        out / "sanity_check.png",
    )
    figures.append(
        {
            "path": "sanity_check.png",
            "caption": "randomisation sanity check: maps should change once weights are random",
        }
    )
    index = {"title": "Grad-CAM", "text": text, "figures": figures}
    write_json({**index, "findings": findings, "sanity_check": check}, out / "explain.json")
    write_json(index, out / "index.json")
    for line in text:
        log(line)
    log(f"wrote {len(figures)} figures, index.json and explain.json to {out}")
    return index


def _findings(head: str, cams: np.ndarray, right: np.ndarray, wrong: np.ndarray) -> dict:
    everyone = heat_shares(cams)
    hot = max(QUADRANTS, key=everyone.get)
    ok = heat_shares(cams[right]) if right.any() else None
    bad = heat_shares(cams[wrong]) if wrong.any() else None
    out = {"n_correct": int(right.sum()), "n_wrong": int(wrong.sum()), "all": everyone, "correct": ok, "wrong": bad}
    line = f"{head}: heat concentrates in the {hot} quarter of the face ({everyone[hot]:.0%} of it over all faces)"
    if ok is None or bad is None:
        out["line"] = f"{line}; {int(right.sum())} correct and {int(wrong.sum())} wrong, no comparison"
        return out
    rho = float(spearman_maps(cams[right].mean(0, keepdims=True), cams[wrong].mean(0, keepdims=True))[0])
    out["mean_map_spearman"] = rho
    out["line"] = (
        f"{line}; upper half (eyes, brows) {ok['upper_half']:.0%} of the heat for correct vs "
        f"{bad['upper_half']:.0%} for wrong answers; mean maps of correct and wrong correlate at Spearman {rho:.2f} "
        f"({int(right.sum())} correct, {int(wrong.sum())} wrong)"
    )
    return out


def _sanity_line(check: dict, head: str) -> str:
    steps = ", ".join(f"+{s['randomised'][-1]} {s['spearman_mean']:.2f}" for s in check["cascade"])
    return (
        f"Sanity check (Adebayo et al. 2018), {head}, {check['n']} faces: Spearman of trained vs fully re-initialised "
        f"maps {check['full_randomisation']:.2f} (trained vs same faces + noise {check['noise_grey_levels']:.0f} grey "
        f"levels: {check['trained_vs_noisy_input']:.2f}); cascading from the heads: {steps}; map of the mirrored "
        f"face vs mirrored map: {check['mirror_consistency']:.2f} (1 = the map follows the face)"
    )
