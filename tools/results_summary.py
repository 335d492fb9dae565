"""Print the headline numbers of the committed result files as Markdown, so the README quotes
them exactly (run from the project root: python tools/results_summary.py)."""

import json
from pathlib import Path


def load(name: str) -> dict | None:
    path = Path("results") / name
    return json.loads(path.read_text()) if path.is_file() else None


def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def main() -> None:
    for name in ("prepare_kaggle.json", "prepare_utkface.json"):
        r = load(name)
        if r:
            d = r["duplicates"]
            print(
                f"- `{r['command']}` → {r['faces_read']} faces, {r['skipped']['total']} skipped, "
                f"{d['near_pairs']} near-duplicate pairs ({d['exact_pairs']} pixel-identical) in {d['groups']} groups; "
                f"gender differs in {pct(d['pairs_gender_differs'])} of pairs, ethnicity in "
                f"{pct(d['pairs_ethnicity_differs'])}; split {r['split']}; {r['seconds']['total']} s"
            )
    r = load("config_compare.json")
    if r:
        print(f"\n`{r['command']}` ({r['budget_minutes']} min each):\n")
        print("| stem | width | epochs | minutes | val score | val gender acc | val ethnicity macro-F1 |")
        print("|---|---|---|---|---|---|---|")
        for x in r["runs"]:
            print(
                f"| {x['stem']} | {x['width']} | {x['epochs_run']} | {x['train_minutes']} | {x['val_score']:.4f} | "
                f"{pct(x['val_gender_acc'])} | {x['val_ethnicity_macro_f1']:.3f} |"
            )
    r = load("multitask_cpu60.json")
    if r:
        t = r["test"]
        print(
            f"\n`{r['command']}`: test gender accuracy {pct(t['gender']['accuracy'])} (ROC AUC "
            f"{t['gender']['roc_auc']:.3f}), ethnicity accuracy {pct(t['ethnicity']['accuracy'])}, ethnicity macro-F1 "
            f"{t['ethnicity']['macro_f1']:.3f}; {r['train_minutes']} min of training, {r['epochs_run']} epochs "
            f"(best {r['best_epoch']}), stopped by {r['stopped_by']}, on {r['device']}.\n"
        )
        print("| class | recall | precision | support |")
        print("|---|---|---|---|")
        for head in ("gender", "ethnicity"):
            for name, m in t[head]["per_class"].items():
                print(f"| {head}: {name} | {pct(m['recall'])} | {pct(m['precision'])} | {m['support']} |")
    r = load("bench_train.json")
    if r:
        print(
            f"\n`{r['command']}`: bare model step {r['bare_model_img_per_s']:.0f} img/s, full pipeline "
            f"{r['pipeline_img_per_s']:.0f} img/s (data {pct(r['pipeline_data_share_of_step'])} of each step), naive "
            f"PIL + DataLoader {r['naive_img_per_s']:.0f} img/s (data {pct(r['naive_data_share_of_step'])}); "
            f"pipeline / naive = {r['pipeline_vs_naive']:.2f}x"
        )
    r = load("ablation_minority_strength.json")
    if r:
        print(f"\n`{r['command']}`:\n")
        for x in r["runs"]:
            print(
                f"- minority_power {x['minority_power']}: validation ethnicity macro-F1 by epoch "
                f"{', '.join(f'{v:.3f}' for v in x['val_ethnicity_macro_f1_by_epoch'])}; test macro-F1 "
                f"{x['test_ethnicity_macro_f1']:.3f}"
            )
    r = load("age_compare.json")
    if r:
        print(f"\n`{r['command']}`:\n")
        print("| model | MAE | CS@5 | bin accuracy | MAE < 13 y | MAE right bin | MAE wrong bin | minutes |")
        print("|---|---|---|---|---|---|---|---|")
        for x in r["table"]:
            f = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
            print(
                f"| {x['model']} | {x['mae']:.2f} | {pct(x['cs5'])} | {pct(x['bin_accuracy'])} | "
                f"{f(x['mae_children_under_13'])} | {f(x['mae_correct_bin'])} | {f(x['mae_wrong_bin'])} | "
                f"{x['train_minutes']} |"
            )

    r = load("age_cpu60.json")
    if r:
        print(f"\n`{r['command']}`:\n")
        print(
            "| model | routing | flip | CPU min | val MAE | test MAE | CS@5 | bin acc | MAE < 13 y | "
            "MAE right bin | MAE wrong bin | gender acc | ethnicity acc |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        f = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
        for x in r["table"]:
            print(
                f"| {x['model']} | {x['routing']} | {'yes' if x['flip_tta'] else 'no'} | {x['cpu_train_minutes']} | "
                f"{x['val_mae']:.2f} | **{x['mae']:.2f}** | {pct(x['cs5'])} | {pct(x['bin_accuracy'])} | "
                f"{f(x['mae_children_under_13'])} | {f(x['mae_correct_bin'])} | {f(x['mae_wrong_bin'])} | "
                f"{pct(x['gender_acc'])} | {pct(x['ethnicity_acc'])} |"
            )
        print(f"\nDefault (lowest validation MAE): {r['default_by_validation_mae']}")

    r = load("report_cpu60.json")
    if r:
        print(f"\n`{r['command']}` → `{r['run']}` ({r['split']} split, {r['n']} faces, 95 % bootstrap CIs):\n")
        print("| metric | value | 95 % CI |")
        print("|---|---|---|")
        for name, m in r["headline"].items():
            scale, unit = (1, " y") if "mae" in name else ((1, "") if "auc" in name or "f1" in name else (100, " %"))
            lo, hi = m["ci"]
            print(
                f"| {name} | {m['value'] * scale:.{1 if scale == 100 else 3}f}{unit} | {lo * scale:.{1 if scale == 100 else 3}f} – {hi * scale:.{1 if scale == 100 else 3}f}{unit} |"
            )
        cal = r["calibration"]
        print()
        for task in ("gender", "ethnicity"):
            c = cal[task]
            print(
                f"- calibration, {task}: temperature {c['temperature']:.3f} (fitted on validation); test ECE "
                f"{pct(c['eval']['ece_before'])} → {pct(c['eval']['ece_after'])}"
            )
        ai = r.get("age_interval")
        if ai:
            print(
                f"- age ranges ({pct(ai['coverage'])} target, split conformal per predicted bin, fitted on validation): "
                f"test coverage {pct(ai['check']['coverage'])}, mean width {ai['check']['mean_width']:.1f} years"
            )
        for grouping, table in r["fairness"].items():
            for metric, g in table["gaps"].items():
                if g is None:
                    continue
                unit = " y" if metric.endswith("mae") else " pt"
                scale = 1 if metric.endswith("mae") else 100
                print(
                    f"- largest gap by {grouping}, {metric}: {g['value'] * scale:.1f}{unit} "
                    f"({g['max_group']} vs {g['min_group']}; 95 % CI {g['ci'][0] * scale:.1f} – {g['ci'][1] * scale:.1f})"
                )

    for name in (
        "external_utk.json",
        "external_utk_shipped.json",
        "external_utk_v2.json",
        "external_utk_v2.1.json",
        "external_utk_v4.json",
        "external_utk_v5.json",
    ):
        r = load(name)
        if not r:
            continue
        print(f"\n`{r['command']}` (model `{r['model']}`, backend {r.get('backend', 'torch')}):\n")
        print(f"- detected {r['detected']} of {r['test_faces']} test faces ({pct(r['detection_rate'])})")
        faces = r.get("dataset_faces", "prepared/kaggle48")
        dataset, chip = ("48×48 table pixels", "48×48") if faces.endswith("kaggle48") else (f"`{faces}`", "model input")
        print(f"\n| on the detected faces | {dataset} | photo → detect → align → {chip} | difference |")
        print("|---|---|---|---|")
        a, b, d = r["kaggle48_detected"], r["photo_path_detected"], r["photo_minus_kaggle48"]
        for key in ("gender_accuracy", "ethnicity_accuracy"):
            print(f"| {key} | {pct(a[key])} | {pct(b[key])} | {d[key] * 100:+.2f} pt |")
        print(f"| age_mae | {a['age_mae']:.2f} y | {b['age_mae']:.2f} y | {d['age_mae']:+.2f} y |")
    for name in (
        "release_onnx.json",
        "release_onnx_v2.json",
        "release_onnx_v2.1.json",
        "release_onnx_v4.json",
        "release_onnx_v5.json",
    ):
        r = load(name)
        if r:
            o = r["onnx"]
            print(
                f"\n`{r['command']}`: {o['path']}, {o['megabytes']} MB, max |PyTorch − ONNX Runtime| over all outputs "
                f"{max(o['max_abs_diff'].values()):.1e} on {o['checked_on']}"
            )

    for name in ("release.json", "release_v2.json", "release_v2.1.json", "release_v4.json", "release_v5.json"):
        r = load(name)
        if not r:
            continue
        w, o = r["weights"], r.get("onnx")
        print(f"\n`{r['command']}`:\n")
        print(f"- weights {w['path']}: {w['megabytes']} MB (float16)")
        print("\n| test split | float32 (run) | float16 (shipped) |")
        print("|---|---|---|")
        for key in ("gender_acc", "ethnicity_acc", "ethnicity_macro_f1", "age_mae"):
            a, b = w["test_float32"][key], w["test_float16"][key]
            fmt = (lambda v: f"{v:.3f} y") if key == "age_mae" else pct
            print(f"| {key} | {fmt(a)} | {fmt(b)} |")
        if o:
            print(
                f"\n- ONNX {o['megabytes']} MB, max |PyTorch − ONNX Runtime| over all outputs "
                f"{max(o['max_abs_diff'].values()):.1e} on {o['checked_on']}"
            )
    r = load("bench_predict.json")
    if r:
        m = r["machine"]
        print(f"\n`{r['command']}` ({m['cpu']}, {m['cores_used']} cores):\n")
        batch = r["classifier"]["onnxruntime"]["batch"]["batch"]
        chip = r.get("input", "48x48 gray").replace("x", "×", 1)
        print(f"| classifier ({r['release']}, {chip} chip → attributes) | one face, median | p90 | batch of {batch} |")
        print("|---|---|---|---|")
        for name, c in r["classifier"].items():
            s1 = c["single_face"]
            print(
                f"| {name} | {s1['median_ms']:.2f} ms | {s1['p90_ms']:.2f} ms | {c['batch']['faces_per_s']:.0f} faces/s |"
            )
        print()
        for name, e in r["end_to_end"].items():
            print(
                f"- photo → attributes ({name}): {e['median_ms']:.1f} ms median (p90 {e['p90_ms']:.1f}), of which "
                f"face detection {e['detection_only']['median_ms']:.1f} ms; {e['photo']}"
            )
        t = r["targets"]
        print(
            f"- targets: ONNX Runtime batch {t['onnxruntime_batch_faces_per_s']['got']} faces/s "
            f"(want {t['onnxruntime_batch_faces_per_s']['want']}), one face {t['onnxruntime_single_face_ms']['got']} ms "
            f"(want {t['onnxruntime_single_face_ms']['want']}): {'met' if t['met'] else 'NOT met'}"
        )
        if "cold_start" in r:
            cold, warm, bulk, u = r["cold_start"], r["warm_latency"], r["bulk"], r["user_targets"]
            print("\n| as a user meets it | median | target |\n|---|---|---|")
            rows = [
                (
                    "`faceattr predict` one 640×480 photo, fresh process",
                    f"{u['got']['cold_start_s']:.2f} s",
                    "cold_start_s",
                ),
                ("`faceattr --help`, fresh process", f"{u['got']['help_s']:.2f} s", "help_s"),
                *[
                    (f"photo → attributes, {name} JPEG, model loaded", f"{w['median_ms']:.1f} ms", None)
                    for name, w in warm.items()
                ],
                (
                    f"`faceattr predict FOLDER`, {bulk['photos']} photos of 640×480, default workers",
                    f"{u['got']['bulk_photos_per_s']:.1f} photos/s",
                    "bulk_photos_per_s",
                ),
                (
                    "the same with `--workers 1`",
                    f"{bulk['one_worker']['photos_per_s']:.1f} photos/s",
                    None,
                ),
            ]
            targets = {"640x480": "photo_640x480_ms", "12MP": "photo_12mp_ms"}
            for label, value, key in rows:
                key = key or next((k for n, k in targets.items() if f", {n} JPEG" in label), None)
                if key:
                    sign = ">=" if key.startswith("bulk") else "<="
                    mark = "met" if u["met"][key] else "NOT met"
                    print(f"| {label} | {value} | {sign} {u['want'][key]} ({mark}) |")
                else:
                    print(f"| {label} | {value} | |")
            slow = ", ".join(
                f"{m['module']} {m['cumulative_ms']:.0f} ms" for m in cold["slowest_imports_of_predict"][:5]
            )
            print(f"\n- slowest imports of `faceattr predict` (`python -X importtime`): {slow}")

    r = load("wild.json")
    if r:
        print(
            "\n| model / split | set | found | gender | ethnicity | eth. macro-F1 | age MAE | age group | signed age error by decade |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for name, v in r["variants"].items():
            given = v.get("input") or v.get("training", {}).get("input")  # older rows: in the training block only
            canonical = "canonical, " + (given or "48×48")
            rows = [(canonical, v["canonical"]), ("UTK-C clean photos", v["utk_c"]["clean"])]
            rows += [("UTK-C, mean of 30 corruptions", v["utk_c"]["mean_over_corruptions"]), ("frl244", v["frl244"])]
            for label, m in rows:
                if not m:
                    continue
                signed = ", ".join(f"{k} {e:+.1f}" for k, e in m.get("age_signed_error_by_decade", {}).items())
                cells = [
                    pct(m["found"]) if m.get("found") is not None else "",
                    *(pct(m[k]) if m.get(k) is not None else "–" for k in ("gender_acc", "ethnicity_acc")),
                    f"{m['ethnicity_macro_f1']:.3f}" if m.get("ethnicity_macro_f1") is not None else "–",
                    f"{m['age_mae']:.2f}" if m.get("age_mae") is not None else "–",
                    pct(m["age_group_acc"]) if m.get("age_group_acc") is not None else "–",
                    signed,
                ]
                print(f"| {name} | {label} | " + " | ".join(cells) + " |")
        first = next(iter(r["variants"].values()))
        for name, v in r["variants"].items():
            t = v.get("training")
            if t:
                c = t["config"]
                given = v.get("input") or t.get("input")  # older rows: in the training block only
                extra = f", {given}" if given else ""
                extra += f", augment {c['augment']}" if c.get("augment") else ""
                if c.get("teacher"):
                    extra += f", teacher embed {c['teacher_embed_weight']} soft {c['teacher_soft_weight']}"
                if c.get("age_balance"):
                    extra += f", age_balance {c['age_balance']}"
                if c.get("init_from"):  # a fine-tune: its epochs come on top of the starting model's
                    extra += f", fine-tuned from {c['init_from']} at lr {c['lr']}"
                print(
                    f"- {name}: trained {t['epochs_run']} epochs, {t['train_minutes']} min on {t['device']} "
                    f"(width {t['config'].get('width')}{extra})"
                )
        print("- commands: " + "; ".join(f"`{v['command']}`" for v in r["variants"].values()))
        worst = sorted(
            ((k, c["gender_acc"], c["ethnicity_acc"], c["age_mae"]) for k, c in first["utk_c"].items() if "/" in k),
            key=lambda t: t[1],
        )[:3]
        print("- hardest corruptions for gender (first model): " + ", ".join(f"{k} {pct(g)}" for k, g, _, _ in worst))
    r = load("hair_edges.json")
    if r:
        first = next(iter(r["models"].values()))
        frames = list(first["frames"])
        print("\n| model / split | " + " | ".join(f"adult women / men, {f}" for f in frames) + " |")
        print("|---|" + "---|" * len(frames))
        for name, v in r["models"].items():
            cells = [f"{pct(m['adult_women_recall'])} / {pct(m['adult_men_recall'])}" for m in v["frames"].values()]
            print(f"| {name} | " + " | ".join(cells) + " |")
        counts = first["frames"]["none"]
        print(
            f"- adults of the validation split: {counts['adult_women']} women, {counts['adult_men']} men; "
            f"band grey {first['wall_grey']}/255"
        )
        print("- commands: " + "; ".join(f"`{v['command']}`" for v in r["models"].values()))
    r = load("frl244_errors.json")
    if r:
        counts = ", ".join(f"{k} {len(m['gender_wrong'])}" for k, m in r["models"].items())
        print(
            f"\n`{r['command']}`: frl244 photos wrong on gender: {counts} (of {next(iter(r['models'].values()))['photos']}); "
            f"wrong in every one of them: {len(r['wrong_in_every_model'])} photos of {r['people_wrong_in_every_model']} people"
        )
    r = load("teacher_dlib.json")
    if r:
        print(f"\n`{r['command']}` ({r['teacher']}; {r['input']}; {r['probes']}):\n")
        print("| faces | embedded | gender | ethnicity | eth. macro-F1 | age MAE |")
        print("|---|---|---|---|---|---|")
        for split, m in r["scores"].items():
            print(
                f"| {split} ({m['faces']:,}) | {m['embedded']:,} | {pct(m['gender_acc'])} | {pct(m['ethnicity_acc'])} | "
                f"{m['ethnicity_macro_f1']:.3f} | {m['age_mae']:.2f} |"
            )
        print(f"- missing: {r['missing']}; {r['seconds']} s")
    for stem in (
        "age_refit_v2",
        "age_refit_v2map",
        "age_refit_v3",
        "age_refit_rgb64",
        "age_refit_ft-frame",
        "age_refit_short-ft-frame-soft",
        "age_refit_short-ft-frame-soft-e3",
        "age_refit_short-ft-frame-soft-v4limit",
    ):
        r = load(f"{stem}.json")
        if not r:
            continue
        print(f"\n`{r['command']}` (rule: {r['rule']}; validation split):\n")
        print("| age heads | routing T | MAE | balanced MAE | tail bias | signed error by decade |")
        print("|---|---|---|---|---|---|")
        rows = [("as trained", "", r["model"])]
        if "baseline" in r:  # the model it would replace, on the same faces: it sets the MAE limit
            rows.insert(0, (f"baseline `{r['baseline']['model']}`", "", r["baseline"]))
        for k, c in r["candidates"].items():
            power, _, mapped = k.partition("+")
            rows.append((f"refit, age_balance {power}" + (", distribution map" if mapped else ""), k, c))
        for label, key, c in rows:
            signed = ", ".join(f"{k} {e:+.1f}" for k, e in c["signed_error_by_decade"].items())
            mark = " (chosen)" if key == r["chosen"] else ""
            tail = f"{c['tail_bias']:.2f}" if "tail_bias" in c else "–"
            print(
                f"| {label}{mark} | {c.get('routing_temperature', '–')} | {c['mae']:.3f} | {c['balanced_mae']:.3f} | {tail} | "
                f"{signed} |"
            )
    for name in ("bars_v5.json", "bars_short-ft-frame-soft-e3.json", "bars_v5_test.json"):
        r = load(name)
        if not r:
            continue
        verdict = "every bar holds" if r["all_pass"] else "not every bar holds"
        print(f"\n`{r['command']}`: {verdict}\n")
        print("| bar | value | must | holds |")
        print("|---|---|---|---|")
        for bar, b in r["bars"].items():
            value = (
                f"{b['value']:+.2f} y"
                if "signed" in bar
                else (f"{b['value']:.2f}" if "mae" in bar else pct(b["value"]))
            )
            if "must_beat" in b:
                must = f"> {pct(b['must_beat'])}"
            elif "floor" in b:
                must = f">= {pct(b['floor'])}"
            elif "ceiling" in b:
                must = f"<= {b['ceiling']:.1f}"
            else:
                must = f"magnitude <= {b['limit']:.2f} y"
            print(f"| {bar} | {value} | {must} | {'yes' if b['pass'] else '**no**'} |")
    r = load("audit_accuracy.json")
    if r:
        print(
            f"\n`{r['command']}` ({r['faces_per_collection']} faces per collection, {r['draws_per_scenario']} "
            f"collections per scenario, {r['bootstrap']} bootstrap replicates; error in points, coverage of the 95 % intervals):\n"
        )
        names = list(next(iter(next(iter(r["scenarios"].values())).values())))
        print("| scenario | attribute | " + " | ".join(n.upper() for n in names) + " |")
        print("|---|---|" + "---|" * len(names))
        for scenario, targets in r["scenarios"].items():
            for target, cells in targets.items():
                row = " | ".join(
                    f"{cells[n]['mean_abs_error_points']:.2f} pt / {cells[n]['coverage_95']:.0%}" for n in names
                )
                print(f"| {scenario} | {target} | {row} |")
        for target, cells in r["overall"].items():
            row = " | ".join(
                f"{cells[n]['mean_abs_error_points']:.2f} pt / {cells[n]['coverage_95']:.0%}" for n in names
            )
            print(f"| **all scenarios** | {target} | {row} |")
    r = load("audit_frl244.json")
    if r:
        print(f"\n`{r['command']}` ({r['photos']} studio portraits; {r['note']}):\n")
        names = list(r["targets"]["gender"]["estimators"])
        print("| attribute | " + " | ".join(n.upper() for n in names) + " |")
        print("|---|" + "---|" * len(names))
        for target, t in r["targets"].items():
            k = len(t["true_share"])
            cells = " | ".join(
                f"{t['estimators'][n]['mean_abs_error_points']} pt ({t['estimators'][n]['classes_inside_interval']}/{k} inside)"
                for n in names
            )
            print(f"| {target} | {cells} |")
    r = load("audit_scale.json")
    if r:
        print(f"\n`{r['command']}` ({r['photos']} photos: {r['photo']}; {r['cores']} cores):\n")
        for label, run in r["runs"].items():
            print(
                f"- {label.replace('_', ' ')}: {run['photos_per_s']} photos/s overall ({run['seconds']} s), "
                f"{run['photos_per_s_once_running']} photos/s once running, start-up {run['startup_seconds']} s"
            )
        e = r["expected"]
        print(
            f"- 2 workers vs 1: {r['speedup_2_vs_1_worker']}×; {r['seconds_per_photo_per_worker']} worker-seconds per photo; "
            "expected: " + ", ".join(f"{k}: ~{v} photos/s" for k, v in e["photos_per_s"].items())
        )
    r = load("serve_abuse.json")
    if r:
        print(f"\n`{r['command']}` (server in its own process, default limits):\n")
        u, sl, w, m = r["unloaded"], r["slow_clients"], r["worst_case_uploads"], r["mixed"]
        print("| case | result |\n|---|---|")
        print(f"| unloaded, one good client | p50 {u['p50_ms']} ms, p95 {u['p95_ms']} ms, statuses {u['statuses']} |")
        print(
            f"| {sl['clients']} slow clients for {sl['seconds']:.0f} s (a byte every {sl['byte_every_s']:g} s), "
            f"good client beside them | p50 {sl['good']['p50_ms']} ms, p95 {sl['good']['p95_ms']} ms "
            f"({sl['p95_ratio']}× unloaded), statuses {sl['good']['statuses']}; slow clients got {sl['slow_answers']} |"
        )
        print(
            f"| {w['parallel']} parallel uploads of a {w['file_bytes']:,}-byte {w['image']}, {w['rounds']} rounds | "
            f"statuses {w['statuses']}, p50 {w['seconds_p50']} s, peak RSS {w['peak_rss_gb']} GB, "
            f"RSS afterwards {w['rss_after_gb']} GB (at start {r['rss_at_start_gb']} GB) |"
        )
        print(
            f"| {m['clients']} clients for {m['seconds']:.0f} s, good and bad requests mixed | "
            f"server errors (5xx other than 503): {m['server_errors']}; tracebacks in the server log: "
            f"{r['server_log']['tracebacks']} |"
        )
        print(f"\n- targets met: {r['targets']['met']}")
    r = load("bench_serve.json")
    if r:
        print(
            f"\n`{r['command']}` ({r['machine']['cores']} cores; {r['photo']}; server started in {r['startup_seconds']} s):\n"
        )
        print("| clients | explain | requests | requests/s | p50 | p95 | statuses |")
        print("|---|---|---|---|---|---|---|")
        for p in r["phases"]:
            print(
                f"| {p['clients']} | {'yes' if p['explain'] else 'no'} | {p['requests']} | {p['requests_per_s']} | "
                f"{p['p50_ms']} ms | {p['p95_ms']} ms | {p['statuses']} |"
            )

    r = load("gradcam_layers.json")
    if r:
        print(f"\n`{r['command']}` ({r['faces']} {r['split']} faces; Spearman means):\n")
        print("| layer | map | head | trained vs noisy input | trained vs re-initialised | mirror check |")
        print("|---|---|---|---|---|---|")
        for x in r["rows"]:
            print(
                f"| {x['layer']} | {x['cells']}×{x['cells']} | {x['head']} | {x['trained_vs_noisy_input']:.2f} | "
                f"{x['full_randomisation']:.2f} | {x['mirror_consistency']:.2f} |"
            )


if __name__ == "__main__":
    main()
