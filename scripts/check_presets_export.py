"""Export the network of every shipped preset and check it against the tools' rules.

For each preset (``ppp_zoo/presets/*.toml``) a checkpoint with the preset's network (its
variant, patch shape, U-Net, decoder and assembly parameters; weights as initialised, seed
0, since only the package layout is checked) is exported with bioimageio.core's model test,
then ``validate --for deepimagej,ilastik`` rules are evaluated. Prints one line per preset:
output channels, package size, export seconds, ilastik's tile and its bytes, and every rule
that fails.

Usage:
  python scripts/check_presets_export.py [--presets nuclei2d-cpu,bbbc010] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def _checkpoint(preset: str, path: Path) -> Path:
    import torch

    from ppp_zoo.config import FORMAT_VERSION, load_preset
    from ppp_zoo.model import PatchPerPixNet
    from ppp_zoo.train import model_kwargs

    cfg = load_preset(preset)
    torch.manual_seed(0)
    kwargs = model_kwargs(cfg)
    net = PatchPerPixNet(**kwargs)
    config = cfg.to_dict()
    config["data"] = dict(config["data"], source="synth-nuclei")  # example image: synthetic
    torch.save({"format_version": FORMAT_VERSION, "model_state": net.state_dict(),
                "model_kwargs": kwargs, "config": config,
                "normalize": config["normalize"], "assembly": cfg.assembly_params().to_dict(),
                "iteration": 0, "history": {"loss": [], "val": []}, "best": None,
                "training": {"object_diameter": None, "source": "preset " + preset}}, path)
    return path


def main(argv: list[str] | None = None) -> int:
    from ppp_zoo.config import preset_names
    from ppp_zoo.export import export_model
    from ppp_zoo.runtime import open_package
    from ppp_zoo.runtime.compat import check_package

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default=",".join(preset_names()))
    parser.add_argument("--out", type=Path, default=None, help="keep the packages here")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="ppp-presets-"))
    out.mkdir(parents=True, exist_ok=True)
    failures = 0
    for preset in args.presets.split(","):
        t0 = time.perf_counter()
        ckpt = _checkpoint(preset, out / f"{preset}.pt")
        result = export_model(ckpt, out / f"{preset}.zip", name=f"PatchPerPix preset {preset}")
        seconds = time.perf_counter() - t0
        rows = check_package(result.path, ("deepimagej", "ilastik"))
        failed = [f"{r.tool}/{r.rule}: {r.detail}" for r in rows if not r.passed]
        tile = next(r.detail for r in rows if r.rule == "tile output <= 100 MiB")
        pkg = open_package(result.path)
        tests = ", ".join(f"{r.weight_format} {r.status}" for r in result.validation)
        print(f"{preset:13} {pkg.variant:8} {pkg.ndim}D patch {'x'.join(map(str, pkg.patchshape))}"
              f": {pkg.n_output_channels} output channels, {result.size_mb:.2f} MB, "
              f"{seconds:.0f} s; test_model {tests}; ilastik {tile}; "
              + ("all deepImageJ/ilastik rules pass" if not failed else
                 "FAILS " + "; ".join(failed)), flush=True)
        failures += bool(failed) or not all(r.passed for r in result.validation)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
