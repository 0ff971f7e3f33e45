"""Synthetic aligned face crops with planted attributes: a ground truth for introspection.

Real face data sets rarely say which images show glasses, masks, turned heads or bad
exposure, so nothing checks whether introspect really finds what a recognition net attends
to.  This module draws 112 x 112 face-like crops of many identities, aligned like the
ArcFace / SFace template (eyes ~(38,52) and (74,52), nose ~(56,72), mouth corners ~(41,92)
and (71,92)), and plants attributes with known labels and realistic rarity.

Faces are laid out on a toy 3-D head (an elliptic cylinder turned by a yaw angle); a
similarity fitted from their five landmarks to the template, as a real detector + aligner
would, plus a little detector jitter, maps them into the crop, where they are drawn with
anti-aliased cv2 primitives (sub-pixel coordinates), soft shading, hair texture, lighting and
sensor noise.  A turned head therefore looks like a real aligned turned head: eyes and mouth
stay near the template while the outline, nose and ears move and the far side narrows.

Every attribute is drawn independently per image (not per identity):

=========  ===============================  ==================================================
column     values                           rate per image (default; ``rates=`` overrides)
=========  ===============================  ==================================================
glasses    none / clear / sun               85 % / 10 % / 5 %   (5 frame shapes, 7 colours)
mask       none / medical                   92 % / 8 %          (7 colours, pleats, ear loops)
pose       frontal / left / right           84 % / 8 % / 8 %    (yaw 22-45 deg; frontal < 9 deg)
dark       0 / 1                            92 % / 8 %          (gamma + exposure down, noise up)
gray       0 / 1                            94 % / 6 %          (saved as 3 equal channels)
blur       0 / 1                            92 % / 8 %          (Gaussian or motion blur)
occluder   none / hand / phone / mic / bar  98.5 % / 0.5 % / 0.4 % / 0.3 % / 0.3 %
=========  ===============================  ==================================================

``left`` means the face is turned towards the image's left (the nose points to smaller x).
Nuisances vary without a label, so attributes are not trivially separable: exposure
(x0.85-1.12), light direction and colour temperature, mild softness on 20 % of sharp
images, noise, JPEG quality 58-95, small roll / scale / shift of the alignment.

Identities: ``max(1, n // 4)`` of them unless ``identities=`` says otherwise; image ``i``
belongs to ``hash(seed, i) mod n_identities`` (by default about four images each,
Poisson-distributed).  An identity fixes skin tone,
face shape, eye spacing / size / colour, brows, nose, mouth, lips, hair colour and style,
ears, beard, moles and freckles (``default_rng([seed, 1, identity])``); each image varies
expression, landmark jitter, gaze, background, clothes, lighting, noise and JPEG quality
(``default_rng([seed, 0, i])``).  Files depend only on ``(seed, n, i)`` -- ``n`` only
through the identity count -- (and on ``identities`` / ``rates`` when given), never on the
worker count.

Speed (>= 1000 images/s on 2 cores): a Python renderer is limited by per-call overhead, not
pixels, so geometry for a block of 256 images is computed at once with numpy and the
per-image loop only issues cv2 calls; worker processes each render, encode and write whole
blocks while the parent streams the list and the labels in order.

Modules, one concern each: ``spec`` (columns, rates, template, argument checks), ``draw``
(cv2 in fixed point, batch geometry helpers), ``identity``, ``draws`` (per-image random
numbers), ``geometry`` (toy 3-D head, feature placement, alignment), the scene parts
``background``, ``head``, ``face``, ``hair``, ``mask``, ``glasses``, ``occluders``, then
``camera`` (lighting, planted dark / blur / gray, noise), ``scene`` (a block from random
numbers to pixels) and ``writer`` (files and worker processes).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from . import camera
from .identity import identity_of
from .scene import render_batch
from .spec import COLUMNS, RATES, SIZE, TEMPLATE, RateTable, SynthError, attrs_path, resolve_rates
from .writer import synthesize

__all__ = ["COLUMNS", "RATES", "SIZE", "TEMPLATE", "SynthError", "attrs_path", "identity_of", "render", "synthesize"]


def render(
    seed: int,
    i: int,
    ident: int,
    noise_bank: np.ndarray | None = None,
    *,
    rates: Mapping[str, RateTable] | None = None,
) -> tuple[np.ndarray, dict, int]:
    """One image: (BGR uint8 112x112x3, labels, JPEG quality); identical to its copy in any block.

    `rates` overrides attribute rates as in synthesize()."""
    bank = camera.noise_bank(seed) if noise_bank is None else noise_bank
    return render_batch(seed, [i], [ident], bank, resolve_rates(rates))[0]
