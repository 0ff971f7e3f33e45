"""What trying four orientations costs `introspect align`: decode + detect + keep per photo, with
`align.rotations` = never (the photo as given), fallback and always (the default), in one run.

The photos are scikit-image's two real faces (tests/test_align.py caches them in models/photos/),
enlarged to a phone photo's 12 MP and stored as JPEG, so decoding weighs what it weighs on real
photos, half of them upside down. Prints milliseconds per photo and the ratio to `never`.

    python bench/align.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from test_align import real_photos  # noqa: E402

from introspect.engine import align, images, nets  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5, help="passes over the photos per setting")
    args = ap.parse_args()
    model = nets.yunet(REPO / "models")
    jpegs = []
    for path in real_photos().values():
        img = cv2.resize(cv2.imread(str(path)), (4000, 3000), interpolation=cv2.INTER_CUBIC)
        for code in (None, cv2.ROTATE_180):  # upright and upside down
            ok, jpg = cv2.imencode(
                ".jpg", img if code is None else cv2.rotate(img, code), [cv2.IMWRITE_JPEG_QUALITY, 90]
            )
            jpegs.append(jpg.tobytes())
    cv2.setNumThreads(1)  # the stage runs one photo per thread
    modes = ("never", "fallback", "always")
    dets = {m: align.Detector(model, align.DetectorSettings(rotations=m)) for m in modes}
    seconds, found = dict.fromkeys(modes, 0.0), dict.fromkeys(modes, 0)
    for _ in range(args.repeat):  # the settings take turns, so a busy moment of the machine hits all three
        for data in jpegs:
            for mode in modes:
                start = time.perf_counter()
                img, _ = images.decode(data, None)
                found[mode] += len(align.find(dets[mode], img, "largest")[0])
                seconds[mode] += time.perf_counter() - start
    for mode in modes:
        seconds[mode] /= args.repeat * len(jpegs)
        print(f"rotations = {mode:8s}: {seconds[mode] * 1000:6.1f} ms a photo ({found[mode]} faces kept)")
    for mode in ("fallback", "always"):
        print(f"{mode} / never: {seconds[mode] / seconds['never']:.2f}")


if __name__ == "__main__":
    main()
