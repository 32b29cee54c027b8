"""The training package (wscfer-train, wscfer-eval, wscfer-export); it needs the ``train`` extra."""
import importlib.util

# `make run` installs the runtime only, yet the venv has these commands: say what is missing in one line.
if importlib.util.find_spec("torch") is None:
    raise SystemExit("wscfer_train needs torch, which the runtime set-up leaves out: "
                     "run `make train-env` (or pip install -e '.[train]')")
