"""Procedural synthetic ReID dataset in the Market-1501 layout, so the real readers load it unchanged.

Why procedural: the kit must show the whole job working with no downloads, and the task must be a *real* ReID
problem, not a trivially separable one. Each identity has a fixed appearance (body proportions, skin and hair,
top/bottom colours and textures, sleeve and leg style, shoes, backpack/handbag/hat); each camera changes it the way
real cameras do (illumination gain, colour cast, blur, JPEG quality, person scale, preferred viewpoint, background
style); each image adds pose (walking phase, viewpoint front/back/side), placement, background clutter and, some
of the time, a partial occluder. The person never fills the frame: empty margins are left around it, which are the
patches that patch elimination should drop. Like Market-1501 the gallery also holds distractors (pid 0000:
background and body fragments) and junk images (pid -1), which the readers skip.

Splits: identities 1..N/2 train, the rest test (or the last ``test_ids`` test: the train split, and so training, stays
the same while the test split grows, which steadies threshold and open-set estimates). Each test identity is seen by
2..C cameras with 2..4 images each; the first image of every camera is a query and the rest go to the gallery, so
every query has cross-camera matches.

Determinism: every image draws from ``numpy.random.default_rng([seed, role, pid, cam, k])``; output is
byte-identical for a seed. Rendering is 2x supersampled with Pillow and box-downsampled.
"""

from __future__ import annotations

import colorsys
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..errors import MobileReIDError, write_failure
from ..options import SynthOptions
from ..settings import check_cli
from .datasets import MARKET_SPLITS

SS = 2  # supersampling factor
_SKIN = [(255, 219, 172), (241, 194, 125), (224, 172, 105), (198, 134, 66), (141, 85, 36), (92, 58, 30)]
_HAIR = [(20, 20, 20), (60, 40, 25), (110, 75, 40), (180, 150, 90), (140, 140, 140), (90, 30, 20)]
PATTERNS = ("plain", "hstripes", "vstripes", "checks", "logo")


def _colour(rng: np.random.Generator, sat=(0.2, 1.0), val=(0.15, 0.95)) -> tuple[int, int, int]:
    h = rng.random()
    s = rng.uniform(*sat)
    v = rng.uniform(*val)
    return tuple(int(255 * c) for c in colorsys.hsv_to_rgb(h, s, v))


@dataclass
class Identity:
    height: float
    build: float
    skin: tuple
    hair: tuple
    hair_long: bool
    top: tuple
    top_pattern: str
    pattern_colour: tuple
    long_sleeves: bool
    bottom: tuple
    bottom_kind: str
    shoes: tuple
    backpack: tuple | None
    handbag: tuple | None
    hat: tuple | None

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Identity:
        return cls(
            height=rng.uniform(0.70, 0.90),
            build=rng.uniform(0.85, 1.2),
            skin=_SKIN[rng.integers(len(_SKIN))],
            hair=_HAIR[rng.integers(len(_HAIR))],
            hair_long=bool(rng.random() < 0.35),
            top=_colour(rng),
            top_pattern=PATTERNS[rng.integers(len(PATTERNS))],
            pattern_colour=_colour(rng),
            long_sleeves=bool(rng.random() < 0.5),
            bottom=_colour(rng, sat=(0.0, 0.8), val=(0.1, 0.8)),
            bottom_kind=("trousers", "trousers", "shorts", "skirt")[rng.integers(4)],
            shoes=_colour(rng, sat=(0.0, 0.5), val=(0.05, 0.9)),
            backpack=_colour(rng) if rng.random() < 0.35 else None,
            handbag=_colour(rng) if rng.random() < 0.25 else None,
            hat=_colour(rng) if rng.random() < 0.2 else None,
        )


@dataclass
class Camera:
    gain: float
    cast: np.ndarray
    blur: float
    jpeg_quality: int
    scale: float
    view_bias: np.ndarray  # probabilities of front/back/left/right
    sky: tuple
    ground: tuple
    clutter: list

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Camera:
        bias = rng.dirichlet(np.ones(4) * 1.5)
        return cls(
            gain=rng.uniform(0.65, 1.3),
            cast=rng.uniform(0.8, 1.2, size=3),
            blur=rng.uniform(0.0, 1.3),
            jpeg_quality=int(rng.integers(45, 96)),
            scale=rng.uniform(0.85, 1.05),
            view_bias=bias,
            sky=_colour(rng, sat=(0.0, 0.4), val=(0.4, 0.95)),
            ground=_colour(rng, sat=(0.0, 0.3), val=(0.2, 0.7)),
            clutter=[_colour(rng, sat=(0.0, 0.7), val=(0.2, 0.9)) for _ in range(5)],
        )


def _background(rng: np.random.Generator, cam: Camera, h: int, w: int) -> Image.Image:
    horizon = int(h * rng.uniform(0.45, 0.7))
    y = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    # the scene changes from image to image; the camera only biases it (real cameras watch changing scenes)
    mix = rng.uniform(0.3, 0.8)
    sky_c = mix * np.asarray(cam.sky, np.float32) + (1 - mix) * np.asarray(
        _colour(rng, sat=(0.0, 0.5), val=(0.3, 0.95)), np.float32
    )
    ground_c = mix * np.asarray(cam.ground, np.float32) + (1 - mix) * np.asarray(
        _colour(rng, sat=(0.0, 0.4), val=(0.2, 0.8)), np.float32
    )
    sky = sky_c * (1.1 - 0.3 * y)
    ground = ground_c * (0.8 + 0.3 * y)
    arr = np.where(np.arange(h)[:, None, None] < horizon, sky, ground) * np.ones((1, w, 1), np.float32)
    arr += rng.normal(0, 6, size=(h, w, 3)).astype(np.float32)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):  # buildings, poles, cars, signs
        c = (
            cam.clutter[rng.integers(len(cam.clutter))]
            if rng.random() < 0.5
            else _colour(rng, sat=(0.0, 0.8), val=(0.15, 0.95))
        )
        c = tuple(int(min(255, v * rng.uniform(0.8, 1.2))) for v in c)
        x0 = rng.uniform(-0.2, 1.0) * w
        bw = rng.uniform(0.05, 0.5) * w
        top = rng.uniform(0.0, 0.8) * h
        bottom = top + rng.uniform(0.05, 0.6) * h
        if rng.random() < 0.3:
            d.ellipse([x0, top, x0 + bw, bottom], fill=c)
        else:
            d.rectangle([x0, top, x0 + bw, bottom], fill=c)
    for _ in range(int(rng.integers(0, 4))):
        c = cam.clutter[rng.integers(len(cam.clutter))]
        d.line(
            [rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0, h)],
            fill=c,
            width=int(rng.integers(1, 4) * SS),
        )
    return img


def _shade(c: tuple, f: float) -> tuple:
    return tuple(int(max(0, min(255, v * f))) for v in c)


def _draw_person(
    d: ImageDraw.ImageDraw, p: Identity, cx: float, top: float, ph: float, view: str, phase: float, parts: str = "all"
) -> None:
    """Draw a person of pixel height ph with the head top at `top`, centred on cx."""
    side = view in ("left", "right")
    face_dir = -1 if view == "left" else 1
    sw = ph * 0.155 * p.build * (0.62 if side else 1.0)  # half shoulder width
    hip = sw * 0.85
    head_r = ph * 0.065
    y_neck, y_waist, y_knee, y_foot = top + ph * 0.14, top + ph * 0.50, top + ph * 0.72, top + ph * 0.96
    swing = np.sin(phase) * ph * 0.06

    # backpack behind the body in back/side views
    if p.backpack and view != "front":
        bx = cx - face_dir * sw * (0.9 if side else 0.0)
        bw = sw * (0.55 if side else 0.8)
        d.rounded_rectangle(
            [bx - bw, y_neck + ph * 0.03, bx + bw, y_waist - ph * 0.04], radius=int(bw * 0.3), fill=p.backpack
        )

    # legs
    leg_w = hip * 0.45
    for sgn in (-1, 1):
        lx = cx + sgn * hip * 0.45 + (sgn * swing if side else 0)
        foot_x = lx + (sgn * swing * 0.8 if side else 0)
        colour = p.bottom if p.bottom_kind == "trousers" else p.skin
        d.polygon(
            [
                (lx - leg_w, y_waist),
                (lx + leg_w, y_waist),
                (foot_x + leg_w * 0.8, y_foot),
                (foot_x - leg_w * 0.8, y_foot),
            ],
            fill=colour,
        )
        if p.bottom_kind == "shorts":
            d.polygon(
                [
                    (lx - leg_w * 1.1, y_waist),
                    (lx + leg_w * 1.1, y_waist),
                    (lx + leg_w * 1.1, y_knee - ph * 0.06),
                    (lx - leg_w * 1.1, y_knee - ph * 0.06),
                ],
                fill=p.bottom,
            )
        d.ellipse(
            [
                foot_x - leg_w * 1.2 + face_dir * leg_w * 0.4 * side,
                y_foot - ph * 0.025,
                foot_x + leg_w * 1.2 + face_dir * leg_w * 0.4 * side,
                y_foot + ph * 0.03,
            ],
            fill=p.shoes,
        )
    if p.bottom_kind == "skirt":
        d.polygon(
            [(cx - hip, y_waist), (cx + hip, y_waist), (cx + hip * 1.5, y_knee), (cx - hip * 1.5, y_knee)],
            fill=p.bottom,
        )
    else:
        d.rectangle([cx - hip, y_waist - ph * 0.01, cx + hip, y_waist + ph * 0.05], fill=p.bottom)

    # torso with texture
    torso = [(cx - sw, y_neck + ph * 0.02), (cx + sw, y_neck + ph * 0.02), (cx + hip, y_waist), (cx - hip, y_waist)]
    d.polygon(torso, fill=p.top)
    x0, x1, y0, y1 = cx - sw, cx + sw, y_neck + ph * 0.02, y_waist
    if p.top_pattern == "hstripes":
        n = 5
        for i in range(n):
            ya = y0 + (y1 - y0) * (i + 0.3) / n
            d.rectangle(
                [x0 + (hip - sw) * (ya - y0) / (y1 - y0) * -1 + 1, ya, x1 - 1, ya + (y1 - y0) * 0.35 / n],
                fill=p.pattern_colour,
            )
    elif p.top_pattern == "vstripes":
        for i in range(4):
            xa = x0 + (x1 - x0) * (i + 0.3) / 4
            d.rectangle([xa, y0, xa + (x1 - x0) * 0.08, y1], fill=p.pattern_colour)
    elif p.top_pattern == "checks":
        cs = (x1 - x0) / 4
        for i in range(4):
            for j in range(int((y1 - y0) / cs) + 1):
                if (i + j) % 2 == 0:
                    d.rectangle(
                        [x0 + i * cs, y0 + j * cs, x0 + (i + 1) * cs, min(y1, y0 + (j + 1) * cs)], fill=p.pattern_colour
                    )
    elif (
        p.top_pattern == "logo"
        and view == ("back" if p.backpack else "front")
        or (p.top_pattern == "logo" and not side)
    ):
        r = sw * 0.35
        d.ellipse([cx - r, y0 + (y1 - y0) * 0.25, cx + r, y0 + (y1 - y0) * 0.25 + 2 * r], fill=p.pattern_colour)
    if p.backpack and view == "front":  # straps
        for sgn in (-1, 1):
            d.line(
                [(cx + sgn * sw * 0.55, y0), (cx + sgn * sw * 0.45, y1 - ph * 0.08)],
                fill=p.backpack,
                width=max(1, int(sw * 0.15)),
            )

    # arms
    arm_w = sw * (0.28 if side else 0.22)
    for sgn in (-1, 1):
        if side and sgn == face_dir:
            continue
        ax = cx + sgn * (sw + arm_w * 0.6) if not side else cx
        hand_x = ax + (-sgn * swing if side else sgn * ph * 0.01)
        hand_y = y_waist + ph * 0.02
        sleeve_end = hand_y if p.long_sleeves else y_neck + ph * 0.16
        d.line([(ax, y_neck + ph * 0.04), (hand_x, hand_y)], fill=p.skin, width=max(1, int(arm_w * 2)))
        mid_x = ax + (hand_x - ax) * (sleeve_end - y_neck) / (hand_y - y_neck)
        d.line([(ax, y_neck + ph * 0.04), (mid_x, sleeve_end)], fill=p.top, width=max(1, int(arm_w * 2.2)))
        if p.handbag and sgn == 1:
            d.rectangle([hand_x - sw * 0.35, hand_y, hand_x + sw * 0.35, hand_y + ph * 0.1], fill=p.handbag)
    if side and p.backpack is None and p.handbag:
        d.rectangle([cx - sw * 0.4, y_waist, cx + sw * 0.4, y_waist + ph * 0.09], fill=p.handbag)

    # head, hair, hat
    hx = cx + (face_dir * head_r * 0.15 if side else 0)
    d.rectangle([cx - head_r * 0.35, y_neck - ph * 0.03, cx + head_r * 0.35, y_neck + ph * 0.02], fill=p.skin)
    d.ellipse([hx - head_r * 0.85, top, hx + head_r * 0.85, top + 2 * head_r], fill=p.skin)
    if view == "back":
        d.ellipse([hx - head_r * 0.9, top - head_r * 0.05, hx + head_r * 0.9, top + 2 * head_r], fill=p.hair)
    else:
        d.chord([hx - head_r * 0.9, top - head_r * 0.1, hx + head_r * 0.9, top + head_r * 1.4], 180, 360, fill=p.hair)
    if p.hair_long:
        d.rectangle(
            [hx - head_r * 0.9, top + head_r * 0.6, hx + head_r * 0.9 * (0.3 if side else 1), top + head_r * 2.8],
            fill=p.hair,
        )
    if p.hat:
        d.chord([hx - head_r * 0.95, top - head_r * 0.25, hx + head_r * 0.95, top + head_r * 1.1], 180, 360, fill=p.hat)
        d.rectangle(
            [hx - head_r * 1.25, top + head_r * 0.35, hx + head_r * 1.25, top + head_r * 0.5], fill=_shade(p.hat, 0.7)
        )


def _finish(img: Image.Image, rng: np.random.Generator, cam: Camera, height: int, width: int) -> bytes:
    img = img.resize((width, height), Image.BOX)
    sigma = max(0.0, cam.blur + rng.normal(0, 0.2))
    if sigma > 0.15:
        img = img.filter(ImageFilter.GaussianBlur(sigma))
    arr = np.asarray(img, np.float32) * cam.gain * rng.uniform(0.9, 1.1) * cam.cast
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    q = int(np.clip(cam.jpeg_quality + rng.integers(-5, 6), 30, 98))
    img.save(buf, format="JPEG", quality=q)
    return buf.getvalue()


def render_person_image(ident: Identity, cam: Camera, rng: np.random.Generator, height: int, width: int) -> bytes:
    H, W = height * SS, width * SS
    img = _background(rng, cam, H, W)
    d = ImageDraw.Draw(img)
    view = ("front", "back", "left", "right")[rng.choice(4, p=0.6 * cam.view_bias + 0.1)]
    ph = H * ident.height * cam.scale * rng.uniform(0.92, 1.05)
    ph = min(ph, H * 0.95)
    top = rng.uniform(0.02, 0.98 - ph / H - 0.0) * H
    cx = W * rng.uniform(0.38, 0.62)
    _draw_person(d, ident, cx, top, ph, view, rng.uniform(0, 2 * np.pi))
    if rng.random() < 0.25:  # partial occluder: a pole, a box in the foreground, or another passer-by's shoulder
        c = cam.clutter[rng.integers(len(cam.clutter))]
        kind = rng.integers(3)
        if kind == 0:
            x = rng.uniform(0.2, 0.8) * W
            d.rectangle([x, 0, x + W * rng.uniform(0.06, 0.15), H], fill=c)
        elif kind == 1:
            y = rng.uniform(0.6, 0.85) * H
            d.rectangle([rng.uniform(-0.2, 0.3) * W, y, rng.uniform(0.6, 1.2) * W, H], fill=c)
        else:
            side = rng.choice([-0.15, 0.85])
            d.ellipse([side * W, rng.uniform(0.2, 0.5) * H, (side + 0.4) * W, H * 1.1], fill=_colour(rng))
    return _finish(img, rng, cam, height, width)


def render_distractor(cam: Camera, rng: np.random.Generator, height: int, width: int, junk: bool) -> bytes:
    """Distractors are background-only detections or fragments; junk is a badly cropped body part."""
    H, W = height * SS, width * SS
    img = _background(rng, cam, H, W)
    if junk or rng.random() < 0.5:
        d = ImageDraw.Draw(img)
        ident = Identity.sample(rng)
        ph = H * rng.uniform(1.5, 3.0)  # zoomed-in fragment
        _draw_person(
            d, ident, W * rng.uniform(0.2, 0.8), -rng.uniform(0.2, 0.6) * ph, ph, "front", rng.uniform(0, 6.28)
        )
    return _finish(img, rng, cam, height, width)


@dataclass
class SynthConfig(SynthOptions):
    """The set's size (SynthOptions: the options users set) and how many images each identity gets per camera."""

    train_images_per_camera: tuple[int, int] = (1, 4)
    test_images_per_camera: tuple[int, int] = (2, 4)
    distractor_fraction: float = 0.05
    junk_fraction: float = 0.03


def train_identities(cfg: SynthOptions) -> int:
    """How many of the identities (the first ones) are train identities: all but ``test_ids``, or half."""
    if cfg.split_problem():
        raise MobileReIDError(
            f"--test-ids {cfg.test_ids} of --ids {cfg.ids}: the train and the test split need 2 identities each"
        )
    return cfg.train_ids()


def plan(cfg: SynthConfig) -> list[tuple[str, str, tuple]]:
    """The list of (split folder, file name, render key) the generator writes; cheap, deterministic."""
    check_cli(cfg)  # ranges declared in options.SynthOptions
    items = []
    num_train = train_identities(cfg)
    frame = 0
    for pid in range(1, cfg.ids + 1):
        rng = np.random.default_rng([cfg.seed, 1, pid])
        n_cams = int(rng.integers(2, cfg.cameras + 1))
        cams = sorted(rng.choice(cfg.cameras, size=n_cams, replace=False).tolist())
        is_train = pid <= num_train
        lo, hi = cfg.train_images_per_camera if is_train else cfg.test_images_per_camera
        for cam in cams:
            for k in range(int(rng.integers(lo, hi + 1))):
                frame += 25 + int(rng.integers(0, 200))
                name = f"{pid:04d}_c{cam + 1}s1_{frame:06d}_{k:02d}.jpg"
                if is_train:
                    split = MARKET_SPLITS["train"]
                else:
                    split = MARKET_SPLITS["query"] if k == 0 else MARKET_SPLITS["gallery"]
                items.append((split, name, ("person", pid, cam, k)))
    n_gallery = sum(1 for it in items if it[0] == MARKET_SPLITS["gallery"])
    rng = np.random.default_rng([cfg.seed, 2])
    for kind, frac, pid_str in (("distractor", cfg.distractor_fraction, "0000"), ("junk", cfg.junk_fraction, "-1")):
        for k in range(max(1, int(round(n_gallery * frac)))):
            cam = int(rng.integers(cfg.cameras))
            frame += 25
            items.append(
                (MARKET_SPLITS["gallery"], f"{pid_str}_c{cam + 1}s1_{frame:06d}_{k:02d}.jpg", (kind, 0, cam, k))
            )
    return items


def render_item(cfg: SynthConfig, key: tuple) -> bytes:
    kind, pid, cam_idx, k = key
    cam = Camera.sample(np.random.default_rng([cfg.seed, 3, cam_idx]))
    if kind == "person":
        ident = Identity.sample(np.random.default_rng([cfg.seed, 4, pid]))
        return render_person_image(
            ident, cam, np.random.default_rng([cfg.seed, 5, pid, cam_idx, k]), cfg.height, cfg.width
        )
    return render_distractor(
        cam,
        np.random.default_rng([cfg.seed, 6 if kind == "junk" else 7, cam_idx, k]),
        cfg.height,
        cfg.width,
        kind == "junk",
    )


def generate(out: str | Path, cfg: SynthConfig, on_step: Callable[[int], None] | None = None) -> int:
    """Write the dataset under `out` (into a temporary sibling folder first, renamed when complete)."""
    import shutil
    import tempfile

    from ..fsmodes import as_created_dir

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: output folder exists and is not empty")
    items = plan(cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    current = out
    try:
        for folder in MARKET_SPLITS.values():
            (tmp / folder).mkdir()
        for split, name, key in items:
            current = out / split / name
            (tmp / split / name).write_bytes(render_item(cfg, key))
            if on_step:
                on_step(1)
        current = out / "SYNTHETIC.txt"
        (tmp / "SYNTHETIC.txt").write_text(
            f"mobilereid synthetic ReID dataset: ids={cfg.ids} test_ids={cfg.ids - train_identities(cfg)} "
            f"cameras={cfg.cameras} seed={cfg.seed} "
            f"size={cfg.height}x{cfg.width}\n"
        )
        current = out
        if out.exists():
            out.rmdir()
        as_created_dir(tmp)  # mkdtemp makes 0700: the dataset folder gets the mode the user's umask asks for
        tmp.rename(out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        # a full disk: one line naming the image being written (its place in the finished set), not errno 28 alone
        failed = write_failure(current, exc, "the partial dataset was removed") if isinstance(exc, OSError) else None
        if failed is None:
            raise
        raise failed from None
    return len(items)
