"""The ``pet_tumour`` model card (``docs/README.md``), rendered from ``configs/metadata.json`` and
``docs/metrics.json`` so every number in it is a measured one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dicom_node.pipelines.pet_tumour.detect import CONTRAST_RATIO, CONTRAST_SEED
from dicom_node.training.pet_tumour.data import seed_ranges

NAMES = {
    "network": "network (2.5-D U-Net, SUV + CT)",
    "suv25": "SUV 2.5 fixed threshold",
    "percent40": "40% of SUVmax per region",
    "percist": "PERCIST-style (1.5 x liver mean + 2 SD)",
}


def _table(metrics: dict[str, Any]) -> str:
    rows = [
        "| method | Dice (mean / min) | lesions found | Dice, detectable only | detectable found "
        "| false calls per scan | false calls by tissue | SUVmax error (median) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, m in metrics["methods"].items():
        rows.append(f"| {NAMES.get(method, method)} | " + _row(m))
    return "\n".join(rows)


def _row(m: dict[str, Any]) -> str:
    """One method's cells after the name (the detectable columns show "-" for metrics from before they were
    measured)."""
    organs = ", ".join(f"{k} {v}" for k, v in m["false_calls_by_organ"].items()) or "none"
    err = m["suvmax_rel_error_median"]
    dd = m.get("dice_detectable_mean")
    found_d = f"{m['detectable_found']}/{m['detectable_lesions']}" if m.get("detectable_lesions") is not None else "-"
    return (
        f"{m['dice_mean']:.3f} / {m['dice_min']:.3f} | {m['lesions_found']}/{m['lesions']} ({m['sensitivity']:.0%}) | "
        f"{'-' if dd is None else f'{dd:.3f}'} | {found_d} | {m['false_calls_per_scan']:.2f} | {organs} | "
        f"{'-' if err is None else f'{err:.1%}'} |"
    )


def _earlier(metrics: dict[str, Any]) -> str:
    """The network of the earlier bundle versions on their held-out seeds, for comparison."""
    earlier = metrics.get("previous") or []
    if not earlier:
        return ""
    rows = [
        "\n\nEarlier versions of the network, for comparison (same seeds and phantoms unless said):\n",
        "| version | Dice (mean / min) | lesions found | Dice, detectable only | detectable found "
        "| false calls per scan | false calls by tissue | SUVmax error (median) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in earlier:
        seeds = e.get("heldout_seeds") or []
        note = "" if seeds == metrics.get("heldout_seeds") else f" (seeds {seed_ranges(seeds)})"
        generator = e.get("phantom_version", 1)
        if generator != metrics.get("phantom_version", 1):
            note += f" (phantom generator version {generator}: other phantoms)"
        rows.append(f"| {e.get('version')}{note} | " + _row(e["network"]))
    return "\n".join(rows)


def _verdict(metrics: dict[str, Any]) -> str:
    net = metrics["methods"]["network"]
    lines = []
    for base in ("suv25", "percent40", "percist"):
        b = metrics["methods"].get(base)
        if b is None:
            continue
        dice = "higher" if net["dice_mean"] > b["dice_mean"] else "not higher"
        fp = "fewer" if net["false_calls_per_scan"] < b["false_calls_per_scan"] else "not fewer"
        sens = (
            "more"
            if net["sensitivity"] > b["sensitivity"]
            else ("as many" if net["sensitivity"] == b["sensitivity"] else "fewer")
        )
        lines.append(
            f"- against {NAMES[base]}: Dice {dice} ({net['dice_mean']:.3f} vs {b['dice_mean']:.3f}), "
            f"{fp} false calls ({net['false_calls_per_scan']:.2f} vs {b['false_calls_per_scan']:.2f} per scan), "
            f"{sens} lesions found ({net['lesions_found']} vs {b['lesions_found']} of {net['lesions']})."
        )
    base_organs = {
        k for b in ("suv25", "percent40") for k in metrics["methods"].get(b, {}).get("false_calls_by_organ", {})
    }
    left_out = sorted(base_organs - set(net["false_calls_by_organ"]))
    if left_out:
        lines.append(f"- Where it wins: no false call at all in {', '.join(left_out)} (the baselines call them).")
    methods = metrics["methods"]
    finding_more = [
        NAMES[b]
        for b in ("suv25", "percent40", "percist")
        if b in methods and methods[b]["lesions_found"] > net["lesions_found"]
    ]
    if net["false_calls_by_organ"] or finding_more:
        remaining = ", ".join(f"{k} {v}" for k, v in net["false_calls_by_organ"].items()) or "none"
        more = (
            f"; the {' and the '.join(finding_more)} {'finds' if len(finding_more) == 1 else 'find'} more of the "
            "small and faint tumours, calling nearly every hot voxel"
            if finding_more
            else ""
        )
        lines.append(f"- Where it does not: false calls remain in {remaining} (over all scans){more}.")
    dice_ok, fp_ok = net["dice_mean"] >= 0.80, net["false_calls_per_scan"] <= 0.5
    lines.append(
        f"- Target of issue 22 (Dice >= 0.80, <= 0.5 physiological calls per scan): "
        f"{'met' if dice_ok and fp_ok else 'NOT met'} on these seeds (Dice {net['dice_mean']:.3f}: "
        f"{'met' if dice_ok else 'not met'}; {net['false_calls_per_scan']:.2f} calls per scan: "
        f"{'met' if fp_ok else 'not met'})."
    )
    return "\n".join(lines)


def _refinement(meta: dict[str, Any]) -> str:
    """The sentence on the boundary refinement (empty when the bundle has none)."""
    fraction = float(meta.get("refine_fraction", 0.0))
    if fraction <= 0.0:
        return ""
    return (
        "Each remaining region's boundary is then redrawn on the SUV: the voxels connected to it, at most 4 mm "
        "beyond it and not hotter than its SUVmax, whose SUV reaches the local background (median of a shell "
        f"around it) plus {fraction:g} of the way up to its SUVmax (the fraction chosen on the validation seeds "
        "with the thresholds); where that contour would keep less than half of the region (a hotter neighbour "
        "giving both the SUVmax and most of the background), the network's region stays as it was."
    )


def render_card(meta: dict[str, Any], metrics: dict[str, Any] | None) -> str:
    """The card's Markdown."""
    t = meta.get("training", {})
    seeds = t.get("seeds", ["?", "?"])
    seeds_text = seeds if isinstance(seeds, str) else f"{seeds[0]}-{seeds[-1]}"
    tuned = meta.get("tuning")
    tuning = (
        "chosen on validation seeds {}, never trained on: the best mean Dice with at most 0.5 false calls "
        "per scan, Dice {} and {} false calls per scan there".format(
            seed_ranges(tuned["validation_seeds"]),
            tuned["chosen"]["dice"],
            tuned["chosen"]["false_per_scan"],
        )
        if tuned
        else "not tuned"
    )
    measured = (
        "Not evaluated yet: run the evaluate command below."
        if metrics is None
        else (
            f"Held-out seeds {metrics['heldout_seeds'][0]}-{metrics['heldout_seeds'][-1]} "
            f"({len(metrics['heldout_seeds'])} phantoms, never used in training); every method goes through the same "
            "lesion extraction (26-connected regions of at least 2 voxels with SUVmax >= 2.0). Dice is per scan over "
            "all tumour voxels (the truth is each tumour's physical extent on the PET grid); a lesion is found when a "
            "called region overlaps it; a false call is a called region that overlaps no tumour, listed by the tissue "
            "under most of it. The PERCIST-style baseline gets its 3 cm liver sphere at the phantom's known liver "
            "position. *Detectable* tumours are those whose SUVmax as measured (after blur, partial volume and "
            "noise) reaches the extraction floor of 2.0 and exceeds the 95th percentile of SUV in their 4-12 mm "
            "surroundings; the others are not a hot spot in the image and no method can find them from the PET. "
            "The detectable columns score those only (a region over an undetectable tumour counts neither way)."
            "\n\n" + _table(metrics) + _earlier(metrics) + "\n\n" + _verdict(metrics) + "\n\n"
            f"Network time per scan (working grid, {metrics['machine']}): {metrics['network_seconds_per_scan']} s."
        )
    )
    return f"""# pet_tumour {meta.get("version", "?")}: model card

**Research use only, not for diagnosis.** Trained on synthetic PET/CT phantoms only; not validated on patients.

## What it does

FDG PET/CT in, tumours out, physiological uptake left out. The PT series is read as SUVbw
(`dicom_node/imaging/suv.py`, QIBA rules; a missing field is refused by name), the CT of the same Frame of
Reference is resampled onto the PET grid through both series' geometry, both go to 4 mm voxels, and a
2.5-D MONAI U-Net ({meta.get("inputs", "")}) gives a tumour probability per voxel; regions at probability
>= {meta.get("threshold", 0.5)} that reach {meta.get("seed_threshold", meta.get("threshold", 0.5))} somewhere are the
lesions ({tuning}), and since 1.3.0 also those that reach {CONTRAST_SEED} with an SUVmax {CONTRAST_RATIO:g}
times the median of the 2 voxels around them (chosen on the validation phantoms: 4 more tumours found, 4 more
calls on focal soft-tissue uptake, of 60 scans); with a CT, a region lying mostly outside the torso (the largest
body outline of its axial CT slice: the arms, and the injection site in them, lie outside) is dropped, and so is
brown fat: a region whose hottest voxel sits in fat on the CT (at least 6 of the 27 voxels around it between
-150 and -30 HU) and whose mirror image across the midline also holds fat with SUV >= 2.5 (the bilateral pattern
of activated brown fat; on the training and validation phantoms of generator version 2 it dropped 65 of 86 hot
brown fat foci and none of 177 tumours). {_refinement(meta)} Per lesion:
SUVmax, SUVmean, SUVpeak (1 ml sphere), MTV (ml) and TLG (g); per study the total MTV and TLG. Without a CT
it runs on the PET alone (CT channels empty, no rule), which it was not trained for. The route option
`method = "suv25"` or `"percent40"` runs a threshold baseline instead (the report says so).

## Training data

- Synthetic PET/CT phantoms from `dicom_node/synth/pet_phantom.py`, seeds {seeds_text}:
  torso from the bladder to the base of the brain, lungs, liver, spleen, kidneys with urine and ureters,
  bladder, myocardium and blood pool, aorta, spine and marrow, bowel loops, arms with the injection site,
  brown fat in some (supraclavicular above the lung apices and paravertebral; generator version 2 from 1.2.0:
  version 1 painted most foci over the lung apices); uptake from literature SUV ranges (liver 1.8-2.8,
  myocardium 2-15, brain 6-10, urine 8-40, bowel 1.5-3.5, brown fat 3-10, injection site 10-60); 2-6 tumours
  of 5-40 mm, SUV 3-20, in the lungs, the liver and lymph nodes (mediastinal, paratracheal and subcarinal,
  axillary, para-aortic, cervical; generator version 3 from 1.4.0 draws a tumour again until it lies in its
  site's tissue with its inner half in no other organ: version 2 left 46 of 107 nodes in the blood pool,
  the myocardium, bone, the brain or a lung, and 10 of 125 lung nodules in the heart); respiratory blur up
  to 12 mm near the diaphragm, PET resolution 5-7 mm FWHM, 4 mm voxels, signal-dependent correlated noise; CT on its own
  2 x 2 x 3 mm grid.
- {t.get("steps", "?")} steps x {t.get("batch", "?")} crops of {t.get("crop", "?")} x {t.get("crop", "?")} voxels
  (40% around tumours, 30% on physiological uptake of SUV >= 2.5, the rest anywhere in the body; from 1.1.0
  the tumour crops are drawn tumour by tumour and the physiological ones tissue by tissue), BCE + soft
  Dice, AdamW with cosine decay, {t.get("seconds", "?")} s on a shared 2-core CPU. {t.get("history", "")}

## Measured

{measured}

## Commands

```sh
dicom-node train pet-tumour --out DIR [--minutes M] [--resume BUNDLE]   # trains, then tunes the thresholds
dicom-node evaluate pet-tumour [--bundle DIR] [--seeds 5000-5002]      # the held-out set rewrites this card
python -m dicom_node.training.pet_tumour train --bundle DIR --minutes 30
python -m dicom_node.training.pet_tumour tune --bundle DIR          # thresholds on the validation seeds
python -m dicom_node.training.pet_tumour evaluate --bundle DIR      # writes docs/metrics.json and this card
```

## Limits

- Synthetic data only: organ shapes are ellipsoids, tumours uniform ellipsoids; real anatomy, real
  physiological variants (muscle uptake, inflammation, infection, post-treatment changes) were not seen.
- Tumours smaller than about twice the PET resolution are blurred below the background (partial volume)
  and are missed by every method; their truth is still counted in the first columns, and left out of the
  detectable ones.
- The detectable tumours it misses are nearly all small: lymph nodes and lung nodules under about 12 mm, and
  liver lesions that stand less than about twice above the liver's uptake after partial volume. A lesion
  touching hotter uptake (a liver lesion against a hot bowel loop) may be outlined poorly.
- FDG only: a series whose headers name another radiopharmaceutical, or carry a radionuclide other than F-18,
  is reported "not applicable" (other tracers have other normal uptake); one that names none but carries F-18
  is read as FDG, and the report says so. A PET of fewer than 5 slices is "not applicable" too.
- Without a CT (PET only) the network has no anatomy and was not trained that way.
- Lesions in the arms are not reported: the torso rule drops regions outside the torso outline (where the
  injection site is), and since 1.1.0 the network scores uptake there low too. The rule leaves alone
  whatever lies inside the outline (the axilla when the arm touches the chest wall on the CT); the phantoms'
  axillary nodes all lie inside it, and how the network does on real axillary nodes is unknown.
- The boundary refinement follows the SUV: a lesion touching uptake at least as hot as itself, or cooler
  uptake above its contour level, may gain or lose up to one voxel (4 mm) along that contact.
- SUV is body-weight SUV; the measures are on the PET grid as stored.
"""


def write_card(bundle: Path) -> None:
    """Render ``docs/README.md`` of ``bundle``."""
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    path = bundle / "docs" / "metrics.json"
    metrics = json.loads(path.read_text()) if path.exists() else None
    (bundle / "docs").mkdir(parents=True, exist_ok=True)
    (bundle / "docs" / "README.md").write_text(render_card(meta, metrics))
