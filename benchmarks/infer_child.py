"""One pipeline on one study in a fresh process: ``python -m benchmarks.infer_child NAME DEVICE FOLDER``.

Prints one JSON line (load and run seconds, memory high-water marks, the findings' summary). The peak
RSS is this address space's ``VmHWM`` at the end, read here: the parent's ``os.wait4`` would report at
least the parent's own peak, which Linux carries over into a child's ``ru_maxrss`` at ``exec``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def vm_hwm_mb() -> float:
    """This process's peak resident memory (``VmHWM``) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str]) -> int:
    name, device, folder = argv
    from pydicom import dcmread

    from dicom_node.pipelines import create

    files = sorted(str(f) for f in Path(folder).iterdir() if f.suffix == ".dcm")
    pipeline = create(name)
    reason = pipeline.applies_to([dcmread(f, stop_before_pixels=True) for f in files])
    if reason is not None:
        print(json.dumps({"not_applicable": reason}))
        return 0
    baseline_mb = vm_hwm_mb()
    t = time.perf_counter()
    volume = pipeline.load(files)
    load_s = time.perf_counter() - t
    loaded_mb = vm_hwm_mb()
    gpu_peak_mb = None
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    findings = pipeline.run(volume, device)
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
        gpu_peak_mb = torch.cuda.max_memory_allocated() / 2**20
    run_s = time.perf_counter() - t
    threads = None
    if "torch" in sys.modules:
        import torch

        threads = torch.get_num_threads()
    print(
        json.dumps(
            {
                "slices": volume.shape[0],
                "load_s": load_s,
                "run_s": run_s,
                "baseline_rss_mb": baseline_mb,
                "after_load_rss_mb": loaded_mb,
                "peak_rss_mb": vm_hwm_mb(),
                "gpu_peak_mb": gpu_peak_mb,
                "torch_threads": threads,
                "version": pipeline.version,
                "summary": findings.summary(),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
