"""Benchmark ``ppp-zoo segment`` on a large image: seconds per stage, peak memory, and
ONNX Runtime against eager PyTorch on the same tiles.

The image is a mosaic of the real DSB 2018 sample (512 x 512), mirrored so that the seams
continue, at ``--size`` (default 2048 x 2048). Stages and peak RSS are measured in one run
of :func:`ppp_zoo.runtime.segment_image` (psutil samples the resident set every 10 ms;
``ru_maxrss`` is reported too). Then the network runs over the same tiles with ONNX Runtime
and with an eager PyTorch copy of the network (rebuilt from the package's TorchScript
weights), with the same thread count, and the ratio of their times is reported; their
outputs are compared as a check. ``--sizes 512,1024,2048`` runs each size in a fresh
process to show how memory grows with the area.

Usage:
  python scripts/bench_segment.py [--model PACKAGE] [--size 2048] [--threads 2] [--fast]
                                  [--device cpu|cuda] [--repeat 1] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import re
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np


def mosaic(size: int) -> np.ndarray:
    """The DSB sample mirrored into a ``size`` x ``size`` mosaic."""
    from ppp_zoo.data.sample import load_dsb_sample

    image, _ = load_dsb_sample()
    row = np.concatenate([image, image[:, ::-1]], axis=1)
    block = np.concatenate([row, row[::-1]], axis=0)
    reps = math.ceil(size / block.shape[0]), math.ceil(size / block.shape[1])
    return np.ascontiguousarray(np.tile(block, reps)[:size, :size])


class PeakRSS:
    """Peak resident set size of this process while the block runs (sampled)."""

    def __init__(self, interval: float = 0.01):
        import psutil

        self._proc = psutil.Process()
        self.interval = interval
        self.peak = 0

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self):
        self.start = self._proc.memory_info().rss
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def eager_network(package):
    """An eager PyTorch copy of the package's network, from its TorchScript weights.

    The architecture (depth, base features, growth, up mode) is read off the weight names
    and shapes; loading the weights strictly checks it.
    """
    import io

    import torch
    from torch import nn

    from ppp_zoo.model import PatchPerPixNet

    scripted = torch.jit.load(io.BytesIO(package.read_bytes(package.weights["torchscript"])),
                              map_location="cpu")
    state = {k.removeprefix("net."): v for k, v in scripted.state_dict().items()}
    state = {k: v for k, v in state.items() if not k.startswith("decoder.")}
    downs = {int(m[1]) for k in state if (m := re.match(r"unet\.down\.(\d+)\.", k))}
    base = state["unet.down.0.0.weight"].shape[0]
    growth = state["unet.down.1.0.weight"].shape[0] // base if len(downs) > 1 else 2
    up_mode = "transpose" if "unet.ups.0.op.weight" in state else "upsample"
    kwargs = {}
    if package.variant == "ppp+dec":
        kwargs = {"code_shape": tuple(package.config["decoder"]["code_shape"])}
    net = PatchPerPixNet(package.ndim, package.n_channels, package.patchshape,
                         variant=package.variant, base_features=base, depth=len(downs),
                         growth=growth, up_mode=up_mode, **kwargs)

    class Probabilities(nn.Module):
        def __init__(self):
            super().__init__()
            self.unet, self.numinst_head, self.patch_head = \
                net.unet, net.numinst_head, net.patch_head

        def forward(self, raw):
            feats = self.unet(raw)
            return (torch.softmax(self.numinst_head(feats), dim=1),
                    torch.sigmoid(self.patch_head(feats)))

    model = Probabilities().eval()
    model.load_state_dict(state, strict=True)
    return model


def _windows(shape, package, tile):
    """The input windows of the runtime's tiling for an image of ``shape``."""
    from ppp_zoo.runtime.segment import default_tile, output_channels
    from ppp_zoo.runtime.tiling import axis_tiles, tile_size, valid_size

    tile = tile or default_tile(len(shape), output_channels(package))
    padded = [valid_size(s, m, st) for s, m, st in zip(shape, package.min_shape, package.step)]
    tiles = [tile_size(t, m, st, h, p) for t, m, st, h, p in
             zip(tile, package.min_shape, package.step, package.halo, padded)]
    layout = [axis_tiles(p, t, h, st) for p, t, h, st in
              zip(padded, tiles, package.halo, package.step)]
    return padded, [tuple(slice(s, s + t) for (s, _, _), t in zip(combo, tiles))
                    for combo in itertools.product(*layout)]


def compare_engines(package, image, threads: int, device: str, tile, repeat: int) -> dict:
    """Time ONNX Runtime and eager PyTorch over the same tiles of the preprocessed image."""
    import torch

    from ppp_zoo.runtime import create_engine, preprocess
    from ppp_zoo.runtime.segment import as_model_input

    torch.set_num_threads(threads)
    x = preprocess(as_model_input(image, package)[None],
                   ("batch", "channel") + package.space_axes, package.preprocessing)
    padded, windows = _windows(x.shape[2:], package, tile)
    x = np.pad(x, [(0, 0), (0, 0)] + [(0, p - s) for s, p in zip(x.shape[2:], padded)],
               mode="reflect")
    ort = create_engine(package, "onnx", device, threads=threads)
    eager = eager_network(package)
    torch_device = torch.device("cuda" if ort.device == "cuda" else "cpu")
    eager.to(torch_device)

    def run_eager(t: np.ndarray):
        with torch.inference_mode():
            outs = eager(torch.from_numpy(t).to(torch_device))
            return [o.float().cpu().numpy() for o in outs]

    first = np.ascontiguousarray(x[(slice(None), slice(None)) + windows[0]])
    a, b = ort(first), run_eager(first)  # warm-up, and the agreement check
    diff = max(float(np.abs(u - v).max()) for u, v in zip(a, b))
    times = {}
    for name, fn in (("onnxruntime", ort), ("pytorch_eager", run_eager)):
        best = math.inf
        for _ in range(repeat):
            t0 = time.perf_counter()
            for w in windows:
                fn(np.ascontiguousarray(x[(slice(None), slice(None)) + w]))
            best = min(best, time.perf_counter() - t0)
        times[name] = round(best, 3)
    return {"tiles": len(windows), "tile_shape": [w.stop - w.start for w in windows[0]],
            "seconds": times, "onnx_speedup": round(times["pytorch_eager"] / times["onnxruntime"], 3),
            "max_abs_diff": diff, "device": ort.device, "threads": threads}


def bench(model: str | None, size: int, threads: int, device: str, tile, repeat: int,
          engines: bool, fast: bool | None = None) -> dict:
    from ppp_zoo.runtime import Segmenter, create_engine, open_package, resolve_model

    path = resolve_model(model)
    package = open_package(path)
    image = mosaic(size)
    if package.ndim == 3:
        raise SystemExit("bench_segment measures 2D models")
    segmenter = Segmenter(package, create_engine(package, "onnx", device, threads=threads))
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        result = segmenter.segment(image, tile=tile, fast=fast)
        total = time.perf_counter() - t0
    out = {
        "model": str(path), "image": list(image.shape), "device": segmenter.engine.device,
        "threads": threads, "fast": fast, "n_instances": result.n_instances, "n_tiles": result.n_tiles,
        "seconds": {k: round(v, 3) for k, v in result.timings.items()} | {"total": round(total, 3)},
        "rss_start_mb": round(mem.start / 2**20, 1), "rss_peak_mb": round(mem.peak / 2**20, 1),
        "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    segmenter.close()
    if engines:
        try:
            out["engines"] = compare_engines(package, image, threads, device, tile, repeat)
        except ImportError as err:
            out["engines"] = f"not measured ({err})"
    return out


def _report(r: dict) -> str:
    lines = [f"model {r['model']}", (f"image {r['image'][0]} x {r['image'][1]}, device "
             f"{r['device']}, {r['threads']} threads{', fast' if r.get('fast') else ''}: "
             f"{r['n_instances']} instances, "
             f"{r['n_tiles']} tiles")]
    lines += [f"  {k:<11} {v:8.2f} s" for k, v in r["seconds"].items()]
    lines.append(f"  peak RSS {r['rss_peak_mb']:.0f} MB (start {r['rss_start_mb']:.0f} MB, "
                 f"ru_maxrss {r['ru_maxrss_mb']:.0f} MB)")
    e = r.get("engines")
    if isinstance(e, dict):
        lines.append(f"inference over {e['tiles']} tiles of {e['tile_shape']}: ONNX Runtime "
                     f"{e['seconds']['onnxruntime']:.2f} s, eager PyTorch "
                     f"{e['seconds']['pytorch_eager']:.2f} s -> ONNX Runtime "
                     f"{e['onnx_speedup']:.2f}x (max |diff| {e['max_abs_diff']:.1e})")
    elif e:
        lines.append(f"engines: {e}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="package (default: the embedded model)")
    parser.add_argument("--size", type=int, default=2048, help="image side in pixels")
    parser.add_argument("--sizes", default=None,
                        help="comma-separated sides, each run in a fresh process")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--tile", default=None, help="tile, e.g. 512x512")
    parser.add_argument("--repeat", type=int, default=1, help="engine timing repeats (best)")
    parser.add_argument("--fast", action="store_true", default=None,
                        help="assemble in fast mode (default: the package's mode)")
    parser.add_argument("--no-engines", action="store_true",
                        help="skip the ONNX Runtime vs eager PyTorch comparison")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    tile = tuple(int(v) for v in args.tile.split("x")) if args.tile else None
    if args.sizes:
        results = []
        for size in (int(s) for s in args.sizes.split(",")):
            cmd = [sys.executable, str(Path(__file__).resolve()), "--size", str(size),
                   "--threads", str(args.threads), "--device", args.device, "--json",
                   "--no-engines"] + (["--fast"] if args.fast else []) + \
                  (["--model", args.model] if args.model else []) + \
                  (["--tile", args.tile] if args.tile else [])
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        if args.json:
            print(json.dumps({"runs": results}))
        else:
            for r in results:
                print(_report(r))
            print("peak RSS above the start, per megapixel: " + ", ".join(
                f"{r['image'][0]}: "
                f"{(r['rss_peak_mb'] - r['rss_start_mb']) / (r['image'][0] * r['image'][1] / 1e6):.0f} MB"
                for r in results))
        return 0
    result = bench(args.model, args.size, args.threads, args.device, tile, args.repeat,
                   not args.no_engines, args.fast)
    print(json.dumps(result) if args.json else _report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
