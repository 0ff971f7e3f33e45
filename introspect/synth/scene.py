"""A block of images from start to end: random numbers, geometry for all at once, then each image's paint.

Geometry is computed with numpy for a whole block (arrays of shape (B,) or (B, k)); the
per-image loop then only issues cv2 calls.  Per-call numpy overhead on tiny arrays, not pixels,
is what limits a Python renderer; vectorising over the block removes it while every image still
draws its numbers from its own default_rng([seed, 0, i])."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from .background import background
from .camera import Camera
from .draw import AA, L8, SHIFT, Canvas, Layer, Part, weighted_choice
from .draws import ImageUniforms, image_uniforms
from .face import Brows, Eyes, Mouth, Nose
from .geometry import Frame, alignment, head_frame
from .glasses import Glasses
from .hair import BackHair, Beard, TopHair
from .head import Body, Cheeks, Ears, Face
from .identity import Traits, identity_traits
from .mask import Mask
from .occluders import Occluders
from .spec import RATES, SIZE, RateTable

Labels = dict[str, str]


def _attributes(v: ImageUniforms, tables: dict[str, RateTable]) -> tuple[list[Labels], dict[str, np.ndarray]]:
    """Each image's planted attributes: labels per image, and per column the index into RATES' values.

    The drawing code goes by those indices (e.g. pose 1 = left), so an override table may list its
    values in any order or leave some out."""
    picked, codes = {}, {}
    for col in RATES:
        table = tables[col]
        values = [value for value, _ in table]
        pick = weighted_choice(getattr(v, col), tuple(p for _, p in table))
        known = [value for value, _ in RATES[col]]
        picked[col] = [values[int(i)] for i in pick]
        codes[col] = np.array([known.index(value) for value in values])[pick]
    labels = [{col: picked[col][b] for col in RATES} for b in range(len(v.pose))]
    return labels, codes


@dataclass(frozen=True)
class Scene(Part):
    """Every part of a block's images, in the order they are painted (back to front)."""

    back_hair: BackHair
    body: Body
    ears: Ears
    face: Face
    cheeks: Cheeks
    beard: Beard
    eyes: Eyes
    brows: Brows
    nose: Nose
    mouth: Mouth
    top_hair: TopHair
    mask: Mask
    glasses: Glasses
    occluders: Occluders

    @classmethod
    def build(cls, f: Frame, t: Traits, v: ImageUniforms, labels: list[Labels], codes: dict[str, np.ndarray]) -> Scene:
        ears = Ears.build(f, t)
        return cls(
            back_hair=BackHair.build(f, t, v),
            body=Body.build(f, t, v),
            ears=ears,
            face=Face.build(f, t),
            cheeks=Cheeks.build(f, t),
            beard=Beard.build(f, t, v),
            eyes=Eyes.build(f, t, v),
            brows=Brows.build(f, t, v),
            nose=Nose.build(f, t),
            mouth=Mouth.build(f, t, v),
            top_hair=TopHair.build(f, t, v),
            mask=Mask.build(f, t, v, codes["mask"] == 1, ears.visible),  # RATES["mask"]: none, medical
            glasses=Glasses.build(f, t, v, codes["glasses"] != 0, codes["glasses"] == 2),  # none, clear, sun
            occluders=Occluders.build(f, [lab["occluder"] for lab in labels]),
        )

    def landmarks(self) -> np.ndarray:
        """The five alignment landmarks (B, 5, 2) in canvas pixels: eyes, nose tip, mouth corners."""
        left, right = self.eyes.sides
        out = np.empty((len(left.center), 5, 2))
        out[:, 0], out[:, 1], out[:, 2] = left.center, right.center, self.nose.tip
        out[:, 3], out[:, 4] = self.mouth.corners[:, 0], self.mouth.corners[:, 1]
        return out

    def paint(self, cv: Canvas, b: int) -> None:
        for f in fields(self):
            getattr(self, f.name).paint(cv, b)


def render_batch(
    seed: int, indices: list[int], idents: list[int], bank: np.ndarray, tables: dict[str, RateTable] | None = None
) -> list[tuple[np.ndarray, Labels, int]]:
    """Render a block of images: [(BGR uint8 112x112x3, labels, JPEG quality)] in order.

    `tables` are checked rate tables (spec.resolve_rates); None means the documented RATES."""
    rngs = [np.random.default_rng([seed, 0, int(i)]) for i in indices]
    v = image_uniforms(rngs)
    t = identity_traits(seed, idents)
    labels, codes = _attributes(v, dict(RATES) if tables is None else tables)
    f = head_frame(v, t, codes["pose"])  # RATES["pose"]: frontal, left, right
    scene = Scene.build(f, t, v, labels, codes)
    A, scale, rot = alignment(scene.landmarks(), v)
    scene.align(A, scale)
    camera = Camera.build(v, f.light, len(bank))
    return [_paint(scene, camera, b, rngs[b], labels[b], rot[b], bank) for b in range(len(indices))]


def _paint(
    scene: Scene, camera: Camera, b: int, rng: np.random.Generator, lab: Labels, rot: float, bank: np.ndarray
) -> tuple[np.ndarray, Labels, int]:
    """Issue one image's cv2 calls from the block's aligned geometry, then the camera model."""
    cv = Canvas(
        img=Layer(background(rng), AA, SHIFT),
        fine=Layer(np.full((SIZE, SIZE), 128, np.uint8)),
        # Coarse shading, drawn at a quarter of the size with the same fixed-point coordinates and
        # two more fractional bits; upscaling it later blurs it for free.
        shade=Layer(np.full((SIZE // 4, SIZE // 4), 128, np.uint8), L8, SHIFT + 2),
        hair_mask=Layer(np.zeros((SIZE, SIZE), np.uint8)),
        rot=rot,
        rng=rng,
    )
    scene.paint(cv, b)
    return camera.develop(cv, b, lab, bank), lab, camera.quality[b]
