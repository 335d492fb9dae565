"""Write MODEL_CARD.md from the result files of the shipped model, so that every number in the
card comes from a result file and the command that wrote it (named beside each section):

python tools/model_card.py > MODEL_CARD.md
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

RESULTS = Path("results")


def load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


@functools.cache
def shipped_checkpoint() -> dict:
    import torch

    from faceattr.release import pretrained_path

    return torch.load(pretrained_path(), map_location="cpu", weights_only=True)


def load_release_name() -> str:
    return shipped_checkpoint()["release"]["name"]


def input_words(ckpt: dict) -> tuple[str, str]:
    """How the card names the model's input: ("48×48 grayscale", "gray") or ("64×64 colour", "RGB")."""
    pre = ckpt["preprocessing"]
    side = f"{pre['size']}×{pre['size']}"
    return (f"{side} grayscale", "gray") if pre["color"] == "gray" else (f"{side} colour", "RGB")


def pct(x: float, digits: int = 1) -> str:
    return f"{100 * x:.{digits}f} %"


def ci_pct(m: dict) -> str:
    lo, hi = m["ci"]
    return f"{100 * m['value']:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}]"


def ci_years(m: dict) -> str:
    lo, hi = m["ci"]
    return f"{m['value']:.2f} [{lo:.2f}, {hi:.2f}]"


def source(name: str, data: dict) -> str:
    return f"_Source: `results/{name}`, written by `{data['command']}`._"


# The result files that describe each packaged model (the default one gets the card).
FILES = {
    "utkface48-v1": {
        "release": "release.json",
        "report": "report_cpu60.json",
        "clusters": "clusters_cpu60.json",
        "external": "external_utk.json",
    },
    "utkface48-v2": {
        "release": "release_v2.json",
        "report": "report_v2.json",
        "clusters": "clusters_v2.json",
        "external": "external_utk_v2.json",
        "refit": "age_refit_v2.json",
    },
    "utkface48-v2.1": {  # utkface48-v2's network with its age heads refitted under the tail-bias rule
        "release": "release_v2.1.json",
        "report": "report_v2.1.json",
        "clusters": "clusters_v2.1.json",
        "external": "external_utk_v2.1.json",
        "refit": "age_refit_v2map.json",
    },
    "utkface64rgb-v4": {  # 64x64 colour from the UTKFace originals, distilled, age heads refitted
        "release": "release_v4.json",
        "report": "report_v4.json",
        "clusters": "clusters_v4.json",
        "external": "external_utk_v4.json",
        "refit": "age_refit_rgb64.json",
    },
    "utkface64rgb-v5": {  # v4 fine-tuned with the frame augmentation and 4x soft targets, ages refitted
        "release": "release_v5.json",
        "report": "report_v5.json",
        "clusters": "clusters_v5.json",
        "external": "external_utk_v5.json",
        "refit": "age_refit_short-ft-frame-soft-v4limit.json",
    },
}


def out_of_domain(add, name: str) -> None:
    """The yardstick rows (results/wild.json, test split) of the shipped and the reference model."""
    wild = load("wild.json")["variants"]
    rows = [(label, wild[f"{label}/test"]) for label in (name, "reference48") if f"{label}/test" in wild]
    if not rows:
        return
    add("## Out of domain (`bench/wild.py`, test split)")
    add("")
    add(
        "The same model on faces that do not look like the training table: UTK-C (the test split's UTKFace "
        "originals under 10 corruptions × 3 severities, through the whole photo path, 300 seeded photos per cell) "
        "and frl244 (244 studio portraits from outside UTKFace, self-reported labels, adults 17–54). The held-out "
        "in-the-wild photos that matter most are scored outside this project."
    )
    add("")
    add("| model | set | gender | ethnicity | eth. macro-F1 | age MAE | age group (FairFace 9) |")
    add("|---|---|---|---|---|---|---|")
    for label, v in rows:
        for set_name, m in (
            ("canonical (the model's input)", v["canonical"]),
            ("UTK-C clean", v["utk_c"]["clean"]),
            ("UTK-C, mean of 30 corruptions", v["utk_c"]["mean_over_corruptions"]),
            ("frl244", v["frl244"]),
        ):
            if m:
                add(
                    f"| {label} | {set_name} | {pct(m['gender_acc'])} | {pct(m['ethnicity_acc'])} | "
                    f"{m['ethnicity_macro_f1']:.3f} | {m['age_mae']:.2f} | {pct(m['age_group_acc'])} |"
                )
    add("")
    add(
        "Signed age error by decade of true age (canonical test): "
        + "; ".join(
            f"{label} " + ", ".join(f"{k} {e:+.1f}" for k, e in v["canonical"]["age_signed_error_by_decade"].items())
            for label, v in rows
        )
        + "."
    )
    add("")
    add("_Source: `results/wild.json`, written by " + "; ".join(f"`{v['command']}`" for _, v in rows) + "._")
    add("")


def main() -> None:
    name = load_release_name()
    files = FILES[name]
    release = load(files["release"])
    report = load(files["report"])
    clusters = load(files["clusters"])
    external = load(files["external"])
    bench = load("bench_predict.json")
    # Every file must describe the model that ships, or the card would mix two models.
    for fname, data, key in (
        (files["report"], report, "run"),
        (files["clusters"], clusters, "run"),
        (files["external"], external, "model"),
    ):
        if data[key] != release["source"]:
            raise SystemExit(f"results/{fname} describes {data[key]}, the release comes from {release['source']}")
    if bench["release"] != load_release_name():
        raise SystemExit("results/bench_predict.json was measured on another model than the packaged one")
    n_bins = len(shipped_checkpoint()["age"]["edges"]) - 1
    w = release["weights"]
    ds = report["dataset"]
    head = report["headline"]
    lines: list[str] = []
    add = lines.append

    add(f"# Model card: faceattr `{name}`")
    add("")
    add("<!-- Written by `python tools/model_card.py > MODEL_CARD.md` from results/*.json; do not edit by hand. -->")
    add("")
    add(
        f"One small convolutional network that reads a {input_words(shipped_checkpoint())[0]} face and gives three "
        "attributes: **gender** (2 classes, calibrated probabilities), **ethnicity** (5 classes, "
        f"calibrated probabilities) and **age** (years, from a two-stage estimator: {n_bins} equally "
        "populated age bins, then a regressor within each bin). It ships inside the `faceattr` "
        "package and is what `faceattr predict` and `Predictor.from_pretrained()` use."
    )
    add("")
    add("## Model")
    add("")
    add(
        f"- Architecture: ResNet-18 layout (torchvision `BasicBlock`s, blocks 2-2-2-2) with a small-image stem "
        f"(stem `{shipped_checkpoint()['config']['stem']}`: 3×3 stride-2 conv + max-pool, widths 64-128-256-512), one linear head "
        f"per output; {bench['parameters']:,} parameters."
    )
    add(
        f"- Weights: `src/faceattr/weights/{name}.pt`, float16, {w['megabytes']} MB, sha256 `{w['sha256'][:16]}…`; "
        "loaded with `torch.load(..., weights_only=True)`."
    )
    pre = shipped_checkpoint()["preprocessing"]
    table_input = pre["color"] == "gray" and pre["size"] == 48  # the Kaggle table's own pixels
    add(
        "- Input: a face aligned by 5 landmarks (MTCNN) onto the UTKFace crop template, "
        f"{input_words(shipped_checkpoint())[1]}, area-resized to {pre['size']}×{pre['size']}."
    )
    add(
        "- ONNX: `faceattr export pretrained --onnx faceattr.onnx` writes one self-contained file (dynamic batch, "
        "calibration and age decoding inside the graph)."
    )
    ckpt = shipped_checkpoint()
    cfg = ckpt["config"]
    if cfg.get("init_from"):  # a fine-tune of an earlier model: say from what, not "from scratch"
        how = (
            f"a fine-tune of all weights of `{Path(cfg['init_from']).stem}`: {cfg['epochs']} epochs at learning rate "
            f"{cfg['lr']} on the CPU, best epoch {report['epoch']} on validation"
        )
    else:
        how = (
            "prepare → dedupe → split → joint training of all three heads from scratch on the CPU; "
            f"best epoch {report['epoch']} on validation"
        )
    add(f"- Training: `{report['command']}` ({how}). The release file was written by `{release['command']}`.")
    frame_p = (cfg.get("augment") or {}).get("frame_p", 0.0)
    if frame_p:
        add(
            f"- Hair-cue augmentation: on {frame_p:.0%} of training faces the chip's side and top bands become one "
            "flat grey (`augment.frame_p`), so that gender is read from the face rather than from hair at the edges."
        )
    if cfg.get("teacher"):
        teacher = load("teacher_dlib.json")
        add(
            "- Distillation: a training-only head regressed the 128-D embedding of dlib's face-recognition ResNet "
            f"(weight {cfg['teacher_embed_weight']}) and the gender and ethnicity heads also matched "
            f"linear probes on it (weight {cfg['teacher_soft_weight']}); the teacher saw the 200×200 colour "
            f"originals (its probes on validation originals: gender {pct(teacher['scores']['val']['gender_acc'])}, "
            f"ethnicity {pct(teacher['scores']['val']['ethnicity_acc'])}). The head is not shipped; dlib is not "
            "needed to run the model. Teacher weights: public domain (Davis King); the 68-point landmark model "
            "with a non-commercial licence is not used."
        )
    refit = ckpt.get("age_refit")
    if refit:
        how = f"age-balanced weights (power {refit['age_balance']})"
        if refit.get("distribution_map"):
            how += (
                " and a monotone map that spreads the answers back onto the training ages' distribution "
                "(`faceattr.age.fit_distribution_map`, inside the ONNX graph)"
            )
        baseline = load(files["refit"]).get("baseline")
        limit = f"; the baseline was `{baseline['model']}`" if baseline else ""
        add(
            f"- Age heads refitted on the frozen backbone with {how}, chosen on validation ({refit['rule']}{limit}; "
            f"`results/{files['refit']}`)."
        )
    add("")
    add(source(files["release"], release))
    add("")
    add("## Data and licence")
    add("")
    if table_input:
        faces = "as the Kaggle `age_gender.csv` table, 48×48 gray"
    else:  # tools/originals_prepared.py: the table's rows and split, the pixels of their originals
        faces = (
            "the rows of the Kaggle `age_gender.csv` table with the pixels of their UTKFace originals "
            f"(200×200 colour) at {pre['size']}×{pre['size']} {input_words(shipped_checkpoint())[1]}"
        )
    add(
        f"- **UTKFace** ({ds['faces_read']:,} faces: {faces}). UTKFace is "
        "released **for non-commercial research only**; so are these weights, which are derived from it."
    )
    d = ds["duplicates"]
    add(
        f"- **Deduplication before splitting**: {d['exact_pairs']} exact and {d['near_pairs']} near-duplicate pairs "
        f"({d['groups']} groups) are kept in one split each, so no face leaks between train, validation and test. "
        f"Labels disagree within many duplicate pairs (gender {pct(d['pairs_gender_differs'])}, ethnicity "
        f"{pct(d['pairs_ethnicity_differs'])}, age off by more than 5 years {pct(d['pairs_age_gap_over_5'])}); "
        "label noise of this size bounds every metric below."
    )
    s = ds["split"]
    add(
        f"- **Split** (hash `{ds['split_hash']}`, the canonical split in `splits/utkface48.csv`): train {s['train']:,}, "
        f"validation {s['val']:,}, test {s['test']:,}; {s['excluded']} faces left out (the extra copies of duplicate groups that fell in validation or test, "
        "so each face is scored once)."
    )
    add(
        "- Labels are UTKFace's: gender as two classes, five coarse ethnicity groups (White, Black, Asian, Indian, "
        "Others) and age 1–116, all annotated from the photo, not self-reported."
    )
    add("")
    add(source(files["report"], report))
    add("")
    add(f"## Test metrics ({report['n']:,} faces, 95 % bootstrap CIs)")
    add("")
    add("| metric | value [95 % CI] |")
    add("|---|---|")
    add(f"| gender accuracy | {ci_pct(head['gender_accuracy'])} |")
    add(
        f"| gender ROC AUC | {head['gender_roc_auc']['value']:.3f} [{head['gender_roc_auc']['ci'][0]:.3f}, "
        f"{head['gender_roc_auc']['ci'][1]:.3f}] |"
    )
    add(f"| ethnicity accuracy | {ci_pct(head['ethnicity_accuracy'])} |")
    add(f"| ethnicity macro-F1 | {ci_pct(head['ethnicity_macro_f1'])} |")
    add(f"| age MAE (years) | {ci_years(head['age_mae'])} |")
    add(f"| age within 5 years (CS@5) | {ci_pct(head['age_cs5'])} |")
    add("")
    add(source(files["report"], report))
    add("")
    f32, f16 = w["test_float32"], w["test_float16"]
    add(
        f"Halving the weights to float16 changes gender accuracy {pct(f32['gender_acc'], 2)} → "
        f"{pct(f16['gender_acc'], 2)}, ethnicity accuracy {pct(f32['ethnicity_acc'], 2)} → "
        f"{pct(f16['ethnicity_acc'], 2)}, age MAE {f32['age_mae']:.3f} → {f16['age_mae']:.3f} years."
    )
    add("")
    add(source(files["release"], release))
    add("")
    add("Per class (test):")
    add("")
    for task in ("gender", "ethnicity"):
        add(f"| {task} | precision | recall | F1 | faces |")
        add("|---|---|---|---|---|")
        for label, c in report[task]["per_class"].items():
            add(f"| {label} | {pct(c['precision'])} | {pct(c['recall'])} | {pct(c['f1'])} | {c['support']} |")
        add("")
    add("## Per-group metrics (test, 95 % bootstrap CIs)")
    add("")
    fair = report["fairness"]
    for group, table in fair.items():
        add(f"By **{group}**:")
        add("")
        add("| group | faces | gender accuracy | ethnicity accuracy | age MAE (years) |")
        add("|---|---|---|---|---|")
        for label, g in table["groups"].items():
            add(
                f"| {label} | {g['n']} | {ci_pct(g['gender_accuracy'])} | {ci_pct(g['ethnicity_accuracy'])} | "
                f"{ci_years(g['age_mae'])} |"
            )
        add("")
        gaps = table["gaps"]
        parts = []
        for metric in ("gender_accuracy", "ethnicity_accuracy", "age_mae"):
            gap = gaps.get(metric)
            if gap:
                unit = " years" if metric == "age_mae" else " pt"
                scale = 1 if metric == "age_mae" else 100
                parts.append(
                    f"{metric.replace('_', ' ')} {scale * gap['value']:.1f}{unit} ({gap['max_group']} vs "
                    f"{gap['min_group']}, CI {scale * gap['ci'][0]:.1f}–{scale * gap['ci'][1]:.1f})"
                )
        add("Largest gaps: " + "; ".join(parts) + ".")
        add("")
    add(source(files["report"], report))
    add("")
    ai = report.get("age_interval")
    if ai:
        check = ai["check"]
        add("## Age ranges")
        add("")
        add(
            f"Every age comes with a range meant to hold the true age {pct(ai['coverage'], 0)} of the time: the "
            "prediction ± a half-width for its predicted age bin, fitted on the validation split by split "
            "conformal prediction (per predicted bin). The guarantee is approximate: the same validation faces "
            "also chose the epoch and the temperatures. On the test split, with the run's float32 weights:"
        )
        add("")
        add(f"- the ranges held {pct(check['coverage'])} of the true ages; mean width {check['mean_width']:.1f} years;")
        add(
            "- half-widths by predicted bin: "
            + ", ".join(f"{label} ±{h:.1f}" for label, h in zip(report["age"]["bin_labels"], ai["half_width"]))
            + " years;"
        )
        short = [band for band, c in check["by_age_band"].items() if c["coverage"] < ai["coverage"] - 0.05]
        add(
            "- held by true age band: "
            + ", ".join(f"{band} {pct(c['coverage'], 0)}" for band, c in check["by_age_band"].items())
            + ". The guarantee is on average over faces of each predicted bin, not for each true age: "
            + (f"here the ranges fall short for {', '.join(short)}." if short else "no band falls short here.")
        )
        add("")
        add(source(files["report"], report))
        add("")
    add("## Calibration")
    add("")
    add(
        "Temperature scaling fitted on the validation split (one temperature per head) and stored in the weights; "
        "the probabilities `faceattr` prints are the scaled ones."
    )
    add("")
    add("| head | temperature | test ECE before | test ECE after |")
    add("|---|---|---|---|")
    for task in ("gender", "ethnicity"):
        c = report["calibration"][task]
        add(
            f"| {task} | {c['temperature']:.3f} | {pct(c['eval']['ece_before'], 2)} | {pct(c['eval']['ece_after'], 2)} |"
        )
    add("")
    temps = [report["calibration"][t]["temperature"] for t in ("gender", "ethnicity")]
    if all(t < 1 for t in temps):
        add(
            "Both temperatures are below 1: the raw network was under-confident, as label smoothing in training tends to make it."
        )
    elif all(t > 1 for t in temps):
        add("Both temperatures are above 1: the raw network was over-confident.")
    add("")
    add(source(files["report"], report))
    add("")
    dataset_faces = (
        "the 48×48 table pixels"
        if table_input
        else f"the prepared {pre['size']}×{pre['size']} {input_words(shipped_checkpoint())[1]} dataset faces"
    )
    add("## On photos (detection, alignment, then the model)")
    add("")
    add(
        f"The {external['test_faces']:,} test faces, taken instead from the original 200×200 UTKFace JPEGs through "
        f"`faceattr predict`'s path (MTCNN, 5-point alignment): faces found in {pct(external['detection_rate'])}; "
        f"on those, gender accuracy {pct(external['photo_path_detected']['gender_accuracy'])}, ethnicity accuracy "
        f"{pct(external['photo_path_detected']['ethnicity_accuracy'])}, age MAE "
        f"{external['photo_path_detected']['age_mae']:.2f} years ({dataset_faces} of the same faces: "
        f"{pct(external['kaggle48_detected']['gender_accuracy'])}, "
        f"{pct(external['kaggle48_detected']['ethnicity_accuracy'])}, {external['kaggle48_detected']['age_mae']:.2f}). "
        "Most missed faces are babies. These are still UTKFace photos; other kinds of photo follow."
    )
    add("")
    add(source(files["external"], external))
    add("")
    out_of_domain(add, name)
    add("## Known failure modes (clusters of test errors)")
    add("")
    add(
        "Test mistakes of each head, clustered on the model's embedding (k-means, k by silhouette); each cluster "
        "is described by what sets it apart from the other mistakes."
    )
    add("")
    for h in clusters["heads"]:
        add(f"**{h['head']}**: {h['n_errors']} errors of {h['n_faces']:,} faces.")
        add("")
        for c in sorted(h["clusters"], key=lambda c: -c["size"])[:5]:
            top = max(c["pairs"], key=c["pairs"].get)
            add(f"- {c['size']} errors: {c['description']}; most often {top} ({c['pairs'][top]}).")
        add("")
    add(
        "In short: gender is close to a coin toss for babies (ages 0-2 in the table above), ethnicity errors "
        "concentrate on the catch-all *Others* and on *Indian*, and the age of older adults is underestimated. "
        "Read the per-group tables before relying on any output for a group."
    )
    add("")
    add(source(files["clusters"], clusters))
    add("")
    add(f"## Speed ({bench['machine']['cpu']}, {bench['machine']['cores_used']} CPU cores, no GPU)")
    add("")
    c = bench["classifier"]
    add("| backend | one face (median) | batch of " + str(c["onnxruntime"]["batch"]["batch"]) + " |")
    add("|---|---|---|")
    for backend, r in c.items():
        add(f"| {backend} | {r['single_face']['median_ms']:.2f} ms | {r['batch']['faces_per_s']:,.0f} faces/s |")
    e = bench["end_to_end"]
    add("")
    add(
        f"Photo → attributes (512×512 photo, one face): {e['torch']['median_ms']:.0f} ms with PyTorch, "
        f"{e['onnx']['median_ms']:.0f} ms with ONNX Runtime; face detection takes "
        f"{e['torch']['detection_only']['median_ms']:.0f} ms of it."
    )
    cold, warm, bulk = bench["cold_start"], bench["warm_latency"], bench["bulk"]
    add("")
    add(
        f"As a user meets it (the default ONNX Runtime path, no torch imported): `faceattr predict photo.jpg` "
        f"takes {cold['predict_one_640x480_photo']['median_s']:.2f} s from a cold start; with the model loaded, "
        f"a 640×480 photo takes {warm['640x480']['median_ms']:.0f} ms and a 12-megapixel one "
        f"{warm['12MP']['median_ms']:.0f} ms; a folder of {bulk['photos']} photos goes at "
        f"{bulk['default_workers']['photos_per_s']:.0f} photos/s."
    )
    add("")
    add(source("bench_predict.json", bench))
    add("")
    add("## Intended use")
    add("")
    add(
        "- Research and teaching on face-attribute estimation, its errors and its biases; benchmarking; "
        "aggregate, consented analyses where per-group error rates above are acceptable."
    )
    add(
        "- Trying the model on your own photos (`faceattr predict`, `faceattr serve`) to see what it does and why "
        "(Grad-CAM)."
    )
    add("")
    add("## Out of scope")
    add("")
    add(
        "- **Any decision about a person**: hiring, admission, credit, policing, border control, age verification "
        "or access control, medical use. The error rates above, and their differences between groups, rule it out."
    )
    add("- **Identification or tracking**: the model does not and must not be used to recognise who someone is.")
    add(
        "- **Inferring how people identify**: gender and ethnicity here are UTKFace's annotations of appearance in "
        "coarse categories (two genders, five groups with a catch-all *Others*); they are not a person's identity."
    )
    add(
        "- Commercial use (UTKFace licence). Faces unlike UTKFace's (profile views, occlusion, very low light, "
        "drawings) are outside what was tested."
    )
    add("")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
