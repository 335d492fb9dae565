"""Clusters of mistakes: the pooled embeddings of misclassified faces, per head, standardised,
reduced by PCA and grouped by k-means (k by silhouette), so that recurring kinds of error
(dark photos, children, one confusion) show up as groups with a montage, label shares, image
statistics and a one-line description of what sets each group apart."""

from __future__ import annotations

import textwrap
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch
from scipy import ndimage
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import silhouette_score
from sklearn.preprocessing import StandardScaler

from faceattr import age as agemod
from faceattr.atomic import write_json
from faceattr.explain import AGE_WRONG_YEARS, load_run, split_faces
from faceattr.figures import new_figure, save_figure, show_image
from faceattr.labels import CLASS_NAMES
from faceattr.model import FaceNet
from faceattr.preprocess import to_input
from faceattr.runs import run_folder
from faceattr.tasks import decode

K_RANGE = range(2, 9)
MIN_ERRORS = 12  # fewer mistakes than this are listed, not clustered
MONTAGE_FACES = 24
# Coarse age groups for describing who is in a cluster in plain words (lower edges, and the
# end of the last): not labels.AGE_BANDS, which split the data and break results down.
DESCRIBED_AGES = (0, 13, 20, 40, 60, 117)
# Numeric features a description may name: (word when lower, word when higher, how to print).
NUMERIC_WORDS = {
    "brightness": ("darker", "brighter", "mean {:.0f} vs {:.0f}"),
    "contrast": ("lower in contrast", "higher in contrast", "pixel sd {:.0f} vs {:.0f}"),
    "sharpness": ("blurrier", "sharper", "Laplacian variance {:.0f} vs {:.0f}"),
    "age": ("younger", "older", "mean age {:.0f} vs {:.0f}"),
    "age_error": ("more under-estimated", "more over-estimated", "mean error {:+.0f} vs {:+.0f} years"),
}


def image_stats(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per-face statistics of uint8 faces (N, H, W[, 3]), each (N,): brightness (mean grey),
    contrast (grey-level sd) and sharpness (variance of the 4-neighbour Laplacian)."""
    x = images.astype(np.float64)
    if x.ndim == 4:
        x = x.mean(3)
    kernel = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], float)[None]  # (1, 3, 3): per image
    lap = ndimage.convolve(x, kernel, mode="mirror")
    return {"brightness": x.mean((1, 2)), "contrast": x.std((1, 2)), "sharpness": lap.var((1, 2))}


@torch.inference_mode()
def embed_faces(
    model: FaceNet, images: np.ndarray, mean: float, std: float, device="cpu", age=None, batch_size: int = 512
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Pooled layer4 embeddings (N, 8w) of uint8 faces, the features every head reads, and the
    decoded predictions (as ``faceattr.train.predict_outputs``) from the same single pass."""
    was_training = model.training
    model.eval()
    embs, preds = [], {}
    for s in range(0, len(images), batch_size):
        z = model.embed(to_input(torch.from_numpy(images[s : s + batch_size]).to(device), mean, std))
        # FaceNet.forward minus dropout, which is the identity in eval mode.
        out = {name: head(z) for name, head in model.heads.items()}
        embs.append(z.float().cpu())
        for name, value in decode(out, age).items():
            preds.setdefault(name, []).append(value.float().cpu().numpy())
    model.train(was_training)
    return torch.cat(embs).numpy(), {name: np.concatenate(parts) for name, parts in preds.items()}


@dataclass
class Clustering:
    """labels (N,) 0..k-1, largest cluster first; silhouette per tried k; coords (N, 2): the
    first two principal components; distance (N,) to the own cluster centre in PCA space."""

    labels: np.ndarray
    k: int
    silhouette: dict[int, float]
    n_components: int
    explained_variance: float
    coords: np.ndarray
    distance: np.ndarray


def cluster_embeddings(
    emb: np.ndarray, seed: int = 0, k_range=K_RANGE, variance: float = 0.9, max_components: int = 20
) -> Clustering:
    """StandardScaler -> PCA (components for ``variance`` of the variance, 2..max_components) ->
    KMeans for each k in ``k_range`` (seeded); k with the best silhouette (ties: smaller k)."""
    n = len(emb)
    x = StandardScaler().fit_transform(emb.astype(np.float64))
    pca = PCA(svd_solver="full").fit(x)
    cum = np.cumsum(pca.explained_variance_ratio_)
    d = int(np.clip(np.searchsorted(cum, variance) + 1, 2, min(max_components, x.shape[1], n)))
    z_all = pca.transform(x)
    z = z_all[:, :d]
    scores, fits = {}, {}
    distinct = len(np.unique(z.round(9), axis=0))
    for k in k_range:
        if k >= min(n, distinct):
            break
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(z)
        if len(np.unique(km.labels_)) < 2:
            continue
        scores[k], fits[k] = float(silhouette_score(z, km.labels_)), km
    if not scores:
        raise ValueError(f"cannot cluster {n} embeddings ({distinct} distinct): need at least 3 distinct ones")
    best = max(scores, key=lambda k: (round(scores[k], 12), -k))
    km = fits[best]
    # Name clusters by size (largest first) so the numbering does not depend on k-means' order.
    order = np.argsort(-np.bincount(km.labels_, minlength=best), kind="stable")
    rename = np.empty(best, int)
    rename[order] = np.arange(best)
    distance = np.linalg.norm(z - km.cluster_centers_[km.labels_], axis=1)
    return Clustering(
        labels=rename[km.labels_],
        k=best,
        silhouette=scores,
        n_components=d,
        explained_variance=float(cum[d - 1]),
        coords=z_all[:, :2],
        distance=distance,
    )


def describe(members: np.ndarray, numeric: dict[str, np.ndarray], shares: dict[str, np.ndarray]) -> tuple[str, list]:
    """One line on what sets ``members`` (bool (N,)) apart from the other rows: the numeric
    feature and the label share (bool (N,) per label) with the largest standardised
    difference (in-group mean minus out-group mean, over the sd of all rows), most distinct
    first. Also returns every scored candidate, sorted. Numeric names come from NUMERIC_WORDS.
    """
    rest = ~members
    scored = []
    for name, v in numeric.items():
        v = np.asarray(v, float)
        sd = v.std()
        a, b = v[members].mean(), v[rest].mean()
        scored.append({"feature": name, "kind": "numeric", "cluster": a, "others": b, "d": (a - b) / sd if sd else 0.0})
    for name, v in shares.items():
        v = np.asarray(v, bool)
        sd = v.std()
        a, b = v[members].mean(), v[rest].mean()
        scored.append({"feature": name, "kind": "share", "cluster": a, "others": b, "d": (a - b) / sd if sd else 0.0})
    scored.sort(key=lambda s: -abs(s["d"]))
    parts = []
    num = next((s for s in scored if s["kind"] == "numeric"), None)
    share = next((s for s in scored if s["kind"] == "share" and s["d"] > 0), None)
    for s in sorted(filter(None, (num, share)), key=lambda s: -abs(s["d"])):
        if s["kind"] == "numeric":
            low, high, fmt = NUMERIC_WORDS.get(
                s["feature"], (f"lower {s['feature']}", f"higher {s['feature']}", "{} vs {}")
            )
            parts.append(f"{high if s['d'] > 0 else low} than other errors ({fmt.format(s['cluster'], s['others'])})")
        else:
            parts.append(f"{100 * s['cluster']:.0f} % {s['feature']} (vs {100 * s['others']:.0f} % of other errors)")
    return "; ".join(parts) or "no feature sets it apart", scored


def _band(ages: np.ndarray) -> np.ndarray:
    labels = [f"aged {lo}-{hi - 1}" for lo, hi in zip(DESCRIBED_AGES[:-1], DESCRIBED_AGES[1:])]
    return np.array(labels)[np.clip(np.searchsorted(DESCRIBED_AGES, ages, side="right") - 1, 0, len(labels) - 1)]


def _head_errors(head: str, part, pred: dict, age) -> dict | None:
    """Who is wrong for one head, with their true and predicted labels as text."""
    if head == "age":
        err = pred["age"] - part.age
        wrong = np.abs(err) > AGE_WRONG_YEARS
        edges = np.asarray(age.edges)
        names = agemod.bin_labels(edges)
        true_lab = np.array(names)[agemod.age_to_bin(part.age.astype(float), edges)]
        pred_lab = np.array(names)[agemod.age_to_bin(pred["age"], edges)]
        return {"wrong": wrong, "true": true_lab, "pred": pred_lab, "age_error": err}
    truth = getattr(part, head).astype(np.int64)
    guess = pred[head].argmax(1)
    names = np.array(CLASS_NAMES[head] + ("?",))
    return {"wrong": (truth >= 0) & (guess != truth), "true": names[truth], "pred": names[guess], "age_error": None}


def cluster_head(
    head: str, part, pred: dict, emb: np.ndarray, stats: dict, age, seed: int, out: Path
) -> tuple[dict, list[dict]]:
    """Cluster one head's mistakes; writes the montages and the map, returns (summary, figures)."""
    info = _head_errors(head, part, pred, age)
    idx = np.flatnonzero(info["wrong"])
    summary = {"head": head, "n_faces": len(part), "n_errors": len(idx)}
    if head == "age":
        summary["error_definition"] = f"|predicted - true age| > {AGE_WRONG_YEARS} years"
    if len(idx) < MIN_ERRORS:
        summary["note"] = f"only {len(idx)} errors (need {MIN_ERRORS}); not clustered"
        summary["ids"] = part.ids[idx].tolist()
        return summary, []
    c = cluster_embeddings(emb[idx], seed)
    true_lab, pred_lab = info["true"][idx], info["pred"][idx]
    numeric = {k: v[idx] for k, v in stats.items()}
    numeric["age"] = part.age[idx].astype(float)
    if info["age_error"] is not None:
        numeric["age_error"] = info["age_error"][idx]
    pair = np.array([f"true {t} predicted {p}" for t, p in zip(true_lab, pred_lab)])
    shares = {name: pair == name for name in np.unique(pair)}
    for other in ("gender", "ethnicity"):
        if other != head:
            lab = np.array(CLASS_NAMES[other] + ("?",))[getattr(part, other)[idx].astype(np.int64)]
            shares.update({name: lab == name for name in np.unique(lab)})
    if head != "age":
        bands = _band(part.age[idx])
        shares.update({name: bands == name for name in np.unique(bands)})

    clusters, figures = [], []
    for j in range(c.k):
        members = c.labels == j
        text, scored = describe(members, numeric, shares)
        closest = np.flatnonzero(members)[np.argsort(c.distance[members], kind="stable")][:MONTAGE_FACES]
        name = f"{head}_cluster{j + 1}.png"
        plot_montage(
            part.images[idx[closest]],
            [f"{t}→{p}" for t, p in zip(true_lab[closest], pred_lab[closest])],
            f"{head} errors, cluster {j + 1} ({members.sum()} faces, closest to the centre): {text}",
            out / name,
        )
        figures.append({"path": name, "caption": f"{head} errors, cluster {j + 1}: {text}"})
        clusters.append(
            {
                "cluster": j + 1,
                "size": int(members.sum()),
                "description": text,
                "true": dict(Counter(true_lab[members].tolist()).most_common()),
                "predicted": dict(Counter(pred_lab[members].tolist()).most_common()),
                "pairs": dict(Counter(pair[members].tolist()).most_common()),
                "stats": {k: float(v[members].mean()) for k, v in numeric.items()},
                "top_differences": [{k: s[k] for k in ("feature", "cluster", "others", "d")} for s in scored[:5]],
                "montage": name,
                "ids": part.ids[idx[members]].tolist(),
            }
        )
    name = f"{head}_map.png"
    legend = [f"{x['cluster']} (n={x['size']}): {x['description'].split('; ')[0]}" for x in clusters]
    plot_map(c.coords, c.labels, legend, f"{head}: {len(idx)} errors", out / name)
    figures.insert(0, {"path": name, "caption": f"{head}: errors on the first two principal components, by cluster"})
    summary.update(
        {
            "k": c.k,
            "silhouette": c.silhouette,
            "pca_components": c.n_components,
            "pca_explained_variance": c.explained_variance,
            "stats_all_errors": {k: float(v.mean()) for k, v in numeric.items()},
            "clusters": clusters,
        }
    )
    return summary, figures


def plot_montage(faces: np.ndarray, captions: list[str], title: str, path: Path, per_row: int = 8) -> Path:
    """A grid of faces with a short caption each."""
    rows = max(1, -(-len(faces) // per_row))
    fig = new_figure(per_row * 1.0, rows * 1.15 + 0.5)
    fig.suptitle(_wrap(title, 110), fontsize=8)
    for i, face in enumerate(faces):
        show_image(fig.add_subplot(rows, per_row, i + 1), face, captions[i], fontsize=6)
    return save_figure(fig, path)


def plot_map(coords: np.ndarray, labels: np.ndarray, names: list[str], title: str, path: Path) -> Path:
    """Scatter of the 2-D PCA map coloured by cluster, with each cluster's number at its centre."""
    fig = new_figure(6.4, 4.6 + 0.17 * len(names))
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["tab10"]
    for j, name in enumerate(names):
        m = labels == j
        ax.scatter(coords[m, 0], coords[m, 1], s=7, alpha=0.6, color=cmap(j % 10), label=name, linewidths=0)
        cx, cy = np.median(coords[m], axis=0)
        ax.annotate(str(j + 1), (cx, cy), fontsize=11, weight="bold", ha="center", va="center")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(f"{title}, k-means clusters on the PCA map", fontsize=9)
    # Below the axes: the legend carries each cluster's description, too long to sit inside.
    ax.legend(fontsize=7, markerscale=2, loc="upper left", bbox_to_anchor=(0, -0.13), frameon=False)
    return save_figure(fig, path)


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width))


def cluster_run(
    run: str | Path,
    data_dir: str | Path | None = None,
    out: str | Path | None = None,
    split: str = "test",
    seed: int = 0,
    device="cpu",
    log=print,
) -> dict:
    """Clusters of the mistakes of every head on one split; writes montages, a PCA map per
    head, ``clusters.json`` and ``index.json`` (title, one-line findings, figures) into
    ``out`` (default RUN/clusters). Returns the index."""
    if out is None:
        out = run_folder(run) / "clusters"
    out = Path(out)
    ckpt, model, age = load_run(run, device)
    part = split_faces(data_dir, split, ckpt, run)
    mean, std = ckpt["preprocessing"]["mean"], ckpt["preprocessing"]["std"]
    emb, pred = embed_faces(model, part.images, mean, std, device, age)
    stats = image_stats(part.images)
    heads = [t for t in CLASS_NAMES if t in model.heads] + (["age"] if age is not None else [])
    summaries, figures, text = [], [], []
    for head in heads:
        summary, figs = cluster_head(head, part, pred, emb, stats, age, seed, out)
        summaries.append(summary)
        figures += figs
        if "clusters" not in summary:
            text.append(f"{head}: {summary['note']}")
            continue
        text.append(
            f"{head}: {summary['n_errors']} errors of {len(part)} {split} faces in {summary['k']} clusters "
            f"(silhouette {summary['silhouette'][summary['k']]:.2f})"
        )
        text += [f"{head} cluster {c['cluster']} ({c['size']}): {c['description']}" for c in summary["clusters"]]
    result = {"run": str(run), "split": split, "seed": seed, "heads": summaries}
    write_json(result, out / "clusters.json")
    index = {"title": "Error clusters", "text": text, "figures": figures}
    write_json(index, out / "index.json")
    for line in text:
        log(line)
    log(f"wrote {len(figures)} figures, clusters.json and index.json to {out}")
    return index
