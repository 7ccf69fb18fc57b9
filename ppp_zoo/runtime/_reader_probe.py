"""Load a model package the way a tool's bundled bioimage.io reader does; print one JSON line.

Run by :mod:`ppp_zoo.runtime.readers` with the Python of a reader environment (an older
bioimageio.spec / bioimageio.core, as a tool pins them), never imported by ppp-zoo itself:
it needs only the standard library and the bioimageio packages installed there.

Usage: ``python _reader_probe.py PACKAGE [--test-model FORMAT ...]``

The description is loaded as ilastik loads it (``load_model_description(source,
perform_io_checks=False, format_version="latest")``, ilastik
``applets/neuralNetwork/modelStateControl.py``); ``--test-model`` then runs that
bioimageio.core's ``test_model`` for each weight format (only ``"passed"`` counts).
"""

import json
import re
import sys


def _field(loc):
    """``covers.0`` from a pydantic location (the union members' names dropped)."""
    return ".".join(str(p) for p in loc
                    if isinstance(p, int) or re.fullmatch(r"[a-z_][a-z0-9_]*", str(p)))


def _first_errors(summary, limit=3):
    found = {}
    for detail in getattr(summary, "details", []):
        for err in getattr(detail, "errors", []):
            field = _field(getattr(err, "loc", ()))
            msg = str(getattr(err, "msg", err)).strip().splitlines()
            found.setdefault(field, f"{field}: {msg[0] if msg else ''}".strip(": "))
            if len(found) >= limit:
                return list(found.values())
    return list(found.values())


def main(argv):
    source = argv[0]
    formats = argv[argv.index("--test-model") + 1:] if "--test-model" in argv else []
    result = {"source": source, "loaded": False, "error": "", "test_model": {}}
    try:
        from bioimageio import spec

        result["spec"] = spec.__version__
        from bioimageio.spec import (
            InvalidDescr,
            load_description,
            load_model_description,
        )

        # the generic loader first: it returns the reasons where the model loader of older
        # specs raises a bare "Invalid model description"
        generic = load_description(source, perform_io_checks=False, format_version="latest")
        if isinstance(generic, InvalidDescr):
            result["error"] = ("invalid description: "
                               + "; ".join(_first_errors(generic.validation_summary)))
            print(json.dumps(result))
            return 0
        try:
            descr = load_model_description(source, perform_io_checks=False,
                                           format_version="latest")
        except Exception as err:  # noqa: BLE001 - the reader's own refusal
            lines = str(err).strip().splitlines()
            details = [ln.strip("- ").strip() for ln in lines[1:4]]
            result["error"] = "; ".join([lines[0] if lines else type(err).__name__] + details)
            print(json.dumps(result))
            return 0
        if isinstance(descr, InvalidDescr):
            result["error"] = "; ".join(_first_errors(descr.validation_summary)) or "invalid"
            print(json.dumps(result))
            return 0
        result["loaded"] = True
        result["format_version"] = str(descr.format_version)
        if formats:
            from bioimageio import core
            from bioimageio.core import test_model

            result["core"] = core.__version__
            for wf in formats:
                summary = test_model(source, weight_format=wf)
                status = str(summary.status)
                errors = [] if status == "passed" else _first_errors(summary)
                result["test_model"][wf] = {"status": status, "errors": errors}
    except Exception as err:  # noqa: BLE001 - reported to the caller, who decides
        result["error"] = f"{type(err).__name__}: {str(err).strip()[:400]}"
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
