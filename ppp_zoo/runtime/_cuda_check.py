"""The child process of :func:`ppp_zoo.runtime.doctor.check_cuda_session`: run the embedded
model once on the CUDA provider and print one JSON line ``{"ok": ..., "detail": ...}``.

It lives apart from :mod:`.doctor` because it creates an engine, and :mod:`.engine` reads
the probes of :mod:`.doctor`.
"""

from __future__ import annotations

import json
import time

from .doctor import _first_line


def main() -> None:
    """Run the check and print its answer (never raises)."""
    import numpy as np

    try:
        from .engine import create_engine
        from .models import embedded_model_path
        from .package import open_package

        package = open_package(embedded_model_path())
        with create_engine(package, "onnx", "cuda") as engine:
            x = np.zeros((1, package.n_channels, *package.min_shape), np.float32)
            t0 = time.perf_counter()
            engine(x)
            seconds = time.perf_counter() - t0
        answer = {"ok": True, "detail": f"the embedded model ran on {engine.provider} "
                                        f"({seconds * 1000:.0f} ms for {x.shape})"}
    except Exception as err:  # noqa: BLE001 - reported, not raised
        answer = {"ok": False, "detail": _first_line(err)}
    print(json.dumps(answer))


if __name__ == "__main__":
    main()
