"""Synthetic FDG PET/CT phantoms with exact tumour truth, on two different grids.

Anatomy is drawn in patient coordinates (LPS, mm; z towards the head) from ellipsoids and cylinders, so the
same scene is evaluated on the CT grid (about 2 mm in-plane, 3 mm slices) and on the PET grid (4 mm voxels,
offset from the CT). Torso from the pelvis (bladder) to the neck, with the base of the skull and the brain at
the top when the field of view reaches it; lungs, liver, spleen, kidneys with collecting systems and ureters,
bladder, heart (myocardium and cavity), aorta, spine, bowel loops, arms along the body (one with the injection
site), occasional brown fat: supraclavicular (above the lung apices) and paravertebral (beside the thoracic
spine), never in a lung, bone or the brain (:data:`VERSION` 2; version 1 painted most foci over the lung apices).

FDG uptake (SUVbw, literature ranges, e.g. Paquet et al. 2004, Wahl et al. 2009 PERCIST): liver 1.8-2.8,
blood pool 1.4-2.0, spleen 1.6-2.4, myocardium 2-15 (fasting state varies), brain 6-10, renal cortex 2.5-5
and urine 8-40, bowel 1.5-3.5, brown fat 3-10 (cold exposure, in some scans), marrow 1.2-2, muscle 0.6-1,
fat 0.3, lung 0.4-0.6, injection site 10-60. Tumours: 2-6 per scan, 5-40 mm, SUV 3-20 (uniform activity,
the measured SUVmax is lower in small ones: partial volume), in the lungs, the liver and lymph nodes
(mediastinal, paratracheal and subcarinal, axillary, para-aortic, cervical). A tumour lies in its site's tissue and
the inner half of it in no other organ (:func:`_fits`: a node between the organs, never inside the aorta, the
heart, the skull or a lung; a lung nodule never inside the heart); one drawn elsewhere is drawn again
(:data:`VERSION` 3; version 2 left 46 of 107 nodes of seeds 0-79 in the blood pool, the myocardium, bone, the
brain, a lung or the liver).

The activity is drawn on a 2 mm grid, blurred in z over the respiratory amplitude near the diaphragm,
blurred by the PET resolution (Gaussian, 5-7 mm FWHM), averaged to the 4 mm PET voxels and given
signal-dependent (Poisson-like), slightly correlated noise. The truth mask of a tumour is its physical
extent: PET voxels at least half inside it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

VERSION = 3  # of the generator: a seed's phantom changes with it (caches key on it)
SITES = ("lung", "liver", "node")
FINE_FACTOR = 2  # activity drawn at PET voxel / FINE_FACTOR


@dataclass(frozen=True)
class Grid:
    """An axis-aligned grid: ``shape`` (slices, rows, columns), ``spacing`` (dz, dy, dx) in mm and
    ``origin`` the patient (x, y, z) of voxel (0, 0, 0). Rows run along +y, columns along +x, slices along +z."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The z, y, x coordinates (mm) of the slices, rows and columns."""
        n, rows, cols = self.shape
        dz, dy, dx = self.spacing
        x0, y0, z0 = self.origin
        return (
            z0 + dz * np.arange(n, dtype=np.float64),
            y0 + dy * np.arange(rows, dtype=np.float64),
            x0 + dx * np.arange(cols, dtype=np.float64),
        )


@dataclass
class Lesion:
    """One tumour: centre (x, y, z) mm, semi-axes (mm), uniform SUV and where it sits."""

    center: tuple[float, float, float]
    radii: tuple[float, float, float]
    suv: float
    site: str

    @property
    def diameter_mm(self) -> float:
        return 2.0 * float(np.mean(self.radii))


@dataclass
class PetCtPhantom:
    """A PET/CT pair: CT (HU) on ``ct_grid``; SUVbw, tumour labels (0 none, i = ``lesions[i-1]``) and organ
    labels on ``pet_grid``; ``liver_voi`` the centre of a 3 cm liver sphere clear of tumours (PERCIST)."""

    ct_hu: np.ndarray
    ct_grid: Grid
    suv: np.ndarray
    pet_grid: Grid
    lesion_labels: np.ndarray
    organ_labels: np.ndarray
    lesions: list[Lesion] = field(default_factory=list)
    liver_voi: tuple[float, float, float] = (0.0, 0.0, 0.0)
    physiology: dict[str, float] = field(default_factory=dict)


ORGANS = (
    "air", "fat", "soft", "muscle", "lung", "liver", "spleen", "kidney", "urine", "bladder", "myocardium",
    "blood", "bone", "marrow", "brain", "bowel", "brown_fat", "injection", "arm",
)  # fmt: skip
ORGAN = {name: i for i, name in enumerate(ORGANS)}
HU = {
    "air": -1000, "fat": -100, "soft": 40, "muscle": 50, "lung": -850, "liver": 60, "spleen": 50, "kidney": 35,
    "urine": 5, "bladder": 5, "myocardium": 45, "blood": 40, "bone": 700, "marrow": 250, "brain": 35,
    "bowel": 25, "brown_fat": -70, "injection": 45, "arm": 50,
}  # fmt: skip


@dataclass
class _Shape:
    organ: str
    center: tuple[float, float, float]
    radii: tuple[float, float, float]
    kind: str = "ellipsoid"  # or "zcyl": cylinder along z (radii x, y; z half-length)

    def covers(self, point: tuple[float, ...]) -> bool:
        """Whether the patient point (x, y, z) lies inside."""
        q = [(x - c) / r for x, c, r in zip(point, self.center, self.radii, strict=True)]
        if self.kind == "zcyl":
            return q[0] ** 2 + q[1] ** 2 <= 1.0 and abs(q[2]) <= 1.0
        return sum(v * v for v in q) <= 1.0


@dataclass
class _Scene:
    shapes: list[_Shape]
    uptake: dict[str, float]
    lesions: list[Lesion]
    body: tuple[float, float]  # semi-axes x, y of the torso
    z_range: tuple[float, float]
    diaphragm_z: float
    breathing_mm: float
    liver_voi: tuple[float, float, float]


def _paint(labels: np.ndarray, axes: tuple[np.ndarray, ...], shape: _Shape, value: int) -> None:
    """Set ``value`` where ``shape`` covers the grid (only its bounding box is evaluated)."""
    zs, ys, xs = axes
    cx, cy, cz = shape.center
    rx, ry, rz = shape.radii
    sl = []
    for coords, c, r in ((zs, cz, rz), (ys, cy, ry), (xs, cx, rx)):
        lo, hi = np.searchsorted(coords, [c - r, c + r])
        sl.append(slice(int(lo), int(hi)))
    if any(s.stop <= s.start for s in sl):
        return
    z = ((zs[sl[0]] - cz) / rz)[:, None, None]
    y = ((ys[sl[1]] - cy) / ry)[None, :, None]
    x = ((xs[sl[2]] - cx) / rx)[None, None, :]
    inside = (x**2 + y**2 <= 1.0) & (np.abs(z) <= 1.0) if shape.kind == "zcyl" else x**2 + y**2 + z**2 <= 1.0
    labels[sl[0], sl[1], sl[2]][inside] = value


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _anatomy(rng: np.random.Generator, z_top: float) -> tuple[list[_Shape], tuple[float, float], float]:
    """Organ shapes, the torso semi-axes and the diaphragm level (z = 0 at the pelvic floor)."""
    bx, by = _u(rng, 140, 165), _u(rng, 95, 115)
    dia = _u(rng, 290, 310)
    s: list[_Shape] = []
    add = s.append
    add(_Shape("fat", (0, 0, dia), (bx, by, dia + 5), "zcyl"))
    add(_Shape("soft", (0, 0, dia), (bx - 15, by - 12, dia + 5), "zcyl"))
    for side in (-1, 1):  # arms along the body
        add(_Shape("arm", (side * (bx + 38), _u(rng, -10, 10), 330), (32, 34, 200), "zcyl"))
        add(_Shape("bone", (side * (bx + 38), 0, 330), (9, 9, 200), "zcyl"))
    neck_z = dia + 180
    add(_Shape("fat", (0, -10, neck_z + 60), (65, 60, 70), "zcyl"))
    add(_Shape("muscle", (0, -5, neck_z + 60), (52, 45, 70), "zcyl"))
    add(_Shape("muscle", (0, 0, dia - 60), (bx - 25, by - 22, 240), "zcyl"))
    add(_Shape("soft", (0, -8, dia - 60), (bx - 35, by - 32, 240), "zcyl"))
    # thorax
    for side, organ_r in ((-1, 1.0), (1, 0.95)):
        add(_Shape("lung", (side * 65, 5, dia + 105), (_u(rng, 50, 58) * organ_r, 68, 115)))
    add(_Shape("soft", (0, -10, dia + 120), (28, 40, 100)))  # mediastinum
    add(_Shape("blood", (8, 10, dia + 150), (14, 14, 60), "zcyl"))  # aortic arch level / ascending
    heart = (18.0, -20.0, dia + 55)
    add(_Shape("myocardium", heart, (52, 45, 55)))
    add(_Shape("blood", heart, (38, 32, 40)))
    # abdomen
    add(_Shape("liver", (-60, 0, dia - 55), (_u(rng, 85, 100), 75, _u(rng, 70, 85))))
    add(_Shape("spleen", (80, 30, dia - 50), (35, 40, 55)))
    for side in (-1, 1):
        kc = (side * 62.0, 45.0, dia - 120 + side * 8)
        add(_Shape("kidney", kc, (28, 26, 55)))
        add(_Shape("urine", (kc[0] - side * 6, kc[1], kc[2]), (9, 8, 25)))
        add(_Shape("urine", (side * 45, 40, dia - 210), (3.0, 3.0, 55), "zcyl"))  # ureter
    for _ in range(int(rng.integers(4, 9))):  # bowel loops
        add(
            _Shape(
                "bowel",
                (_u(rng, -90, 90), _u(rng, -60, 10), _u(rng, 60, dia - 100)),
                (_u(rng, 12, 25), _u(rng, 10, 18), _u(rng, 12, 40)),
            )
        )
    add(_Shape("blood", (0, 28, dia - 60), (11, 11, 170), "zcyl"))  # descending aorta
    add(_Shape("bladder", (0, -30, 45), (_u(rng, 35, 50), _u(rng, 25, 35), _u(rng, 25, 35))))
    # spine, pelvis and skull
    add(_Shape("bone", (0, 65, z_top / 2), (18, 16, z_top), "zcyl"))
    add(_Shape("marrow", (0, 65, z_top / 2), (13, 11, z_top), "zcyl"))
    for side in (-1, 1):
        add(_Shape("marrow", (side * 80, 30, 70), (40, 22, 50)))
    head_z = neck_z + 150
    add(_Shape("bone", (0, 0, head_z), (78, 95, 100)))
    add(_Shape("brain", (0, 0, head_z), (70, 86, 90)))
    return s, (bx, by), dia


def _lesion_site(
    rng: np.random.Generator, site: str, dia: float, body: tuple[float, float], neck_z: float
) -> tuple[float, float, float]:
    if site == "lung":
        side = float(rng.choice([-1.0, 1.0]))
        return (side * _u(rng, 50, 80), _u(rng, -20, 35), dia + _u(rng, 40, 180))
    if site == "liver":
        return (_u(rng, -110, -25), _u(rng, -35, 35), dia - _u(rng, 25, 95))
    station = int(rng.integers(0, 5))
    if station == 0:  # mediastinal: prevascular and paratracheal, around the aortic arch
        return (_u(rng, -24, 24), _u(rng, -40, 25), dia + _u(rng, 110, 190))
    if station == 1:  # axillary
        side = float(rng.choice([-1.0, 1.0]))
        return (side * (body[0] - 30), _u(rng, -20, 20), dia + _u(rng, 120, 180))
    if station == 2:  # para-aortic
        return (_u(rng, -30, 30), _u(rng, 20, 40), dia - _u(rng, 110, 180))
    if station == 3:  # cervical, below the skull base
        side = float(rng.choice([-1.0, 1.0]))
        return (side * _u(rng, 20, 40), _u(rng, -20, 15), neck_z + _u(rng, 5, 50))
    return (_u(rng, -26, -4), _u(rng, -10, 25), dia + _u(rng, 95, 150))  # right paratracheal / subcarinal


def _organ_at(point: tuple[float, ...], shapes: list[_Shape]) -> str:
    """The organ a point is labelled with: the last of ``shapes`` (in painting order) that covers it."""
    organ = "air"
    for shape in shapes:
        if shape.covers(point):
            organ = shape.organ
    return organ


SITE_TISSUE = {"lung": ("lung",), "liver": ("liver",), "node": ("soft", "muscle", "fat")}
"""The tissue a tumour's centre must lie in, by site: lymph nodes lie in the soft tissue and fat between organs."""
SITE_KEEP_OUT = {
    "lung": ("myocardium", "blood", "bone", "marrow", "liver", "spleen"),
    "liver": ("kidney", "urine", "bone", "marrow", "lung", "blood", "myocardium"),
    "node": (
        "blood", "myocardium", "brain", "bone", "marrow", "lung", "liver", "spleen", "kidney", "urine", "bladder",
        "bowel",
    ),
}  # fmt: skip
"""What the inner half of a tumour (its radii halved) may not reach into, by site: a node is not drawn inside the
aorta, the heart, the skull or an organ, a lung nodule not inside the heart."""
PLACEMENT_TRIES = 200


def _fits(
    site: str, center: tuple[float, float, float], radii: tuple[float, float, float], shapes: list[_Shape]
) -> bool:
    """Whether a tumour of ``site`` can sit at ``center``: its centre in the site's tissue
    (:data:`SITE_TISSUE`) and 26 points of its inner half's surface (radii halved) in none of the tissues of
    :data:`SITE_KEEP_OUT`, as the organs are painted."""
    if _organ_at(center, shapes) not in SITE_TISSUE[site]:
        return False
    inner = (radii[0] / 2, radii[1] / 2, radii[2] / 2)
    return not any(_organ_at(p, shapes) in SITE_KEEP_OUT[site] for p in _probe_points(center, inner))


def _probe_points(center: tuple[float, float, float], radii: tuple[float, float, float]) -> list[tuple[float, ...]]:
    """The centre of the ellipsoid (``center``, ``radii``) and 26 points of its surface."""
    points = []
    for d in np.argwhere(np.ones((3, 3, 3), dtype=bool)) - 1:
        n = float(np.linalg.norm(d))
        points.append(tuple(c + (r * v / n if n else 0.0) for c, r, v in zip(center, radii, d, strict=True)))
    return points


def _overlaps(center: tuple[float, float, float], radii: tuple[float, float, float], other: _Shape) -> bool:
    """Whether the ellipsoid (``center``, ``radii``) reaches into the shape ``other`` (tested on its
    :func:`_probe_points`)."""
    return any(other.covers(p) for p in _probe_points(center, radii))


def _brown_fat_focus(
    rng: np.random.Generator, side: float, supraclavicular: bool, dia: float, shapes: list[_Shape]
) -> _Shape:
    """One brown fat focus on ``side``: supraclavicular (just above the lung apex, lateral to the skull base) or
    paravertebral (beside the thoracic spine, behind the lung), moved outwards until clear of the lungs, bone,
    marrow and brain, since brown fat is fat between them."""
    radii = (_u(rng, 5, 10), _u(rng, 5, 9), _u(rng, 6, 14))
    a, b, c = _u(rng, 0, 1), _u(rng, 0, 1), _u(rng, 0, 1)
    keep_out = [sh for sh in shapes if sh.organ in ("lung", "bone", "marrow", "brain")]
    lungs = [sh for sh in keep_out if sh.organ == "lung"]
    if supraclavicular:
        apex = max(sh.center[2] + sh.radii[2] for sh in lungs)
        center = [side * (45 + 25 * a), -10 + 40 * b, apex + radii[2] + 20 * c]
    else:
        center = [side * (22 + 8 * a), 70 + 12 * b, dia + 40 + 140 * c]
    for _ in range(40):
        if not any(_overlaps((center[0], center[1], center[2]), radii, sh) for sh in keep_out):
            break
        center[0] += side * 2.0
    return _Shape("brown_fat", (center[0], center[1], center[2]), radii)


def placement_rng(seed: int) -> np.random.Generator:
    """The generator a seed's tumours are moved with when their first position does not fit (:func:`_fits`);
    separate from the scene's, so that every other draw of the seed stays what it was."""
    return np.random.default_rng([seed, 1])


def _scene(rng: np.random.Generator, z_top: float, n_lesions: int | None, spare: np.random.Generator) -> _Scene:
    """The scene of a phantom; ``spare`` (:func:`placement_rng`) redraws a tumour's position until it fits."""
    shapes, body, dia = _anatomy(rng, z_top)
    uptake = {
        "air": 0.0, "fat": 0.3, "soft": 0.8, "muscle": _u(rng, 0.6, 1.0), "lung": _u(rng, 0.4, 0.6),
        "liver": _u(rng, 1.8, 2.8), "spleen": _u(rng, 1.6, 2.4), "kidney": _u(rng, 2.5, 5.0),
        "urine": _u(rng, 8, 40), "bladder": _u(rng, 10, 40),
        "myocardium": float(rng.choice([_u(rng, 2, 4), _u(rng, 4, 15)])),
        "blood": _u(rng, 1.4, 2.0), "bone": 0.6, "marrow": _u(rng, 1.2, 2.0), "brain": _u(rng, 6, 10),
        "bowel": _u(rng, 1.5, 3.5), "brown_fat": _u(rng, 3, 10), "injection": _u(rng, 10, 60), "arm": 0.7,
    }  # fmt: skip
    neck_z = dia + 180
    if rng.random() < 0.3:  # brown fat: bilateral supraclavicular and paravertebral foci
        anatomy = list(shapes)
        for side in (-1, 1):
            for j in range(int(rng.integers(1, 4))):
                shapes.append(_brown_fat_focus(rng, side, j == 0, dia, anatomy))
    arm = float(rng.choice([-1.0, 1.0]))  # injection site in an antecubital vein
    shapes.append(_Shape("injection", (arm * (body[0] + 38), _u(rng, -20, 0), _u(rng, 250, 420)), (5, 5, 9)))
    count = int(rng.integers(2, 7)) if n_lesions is None else n_lesions
    lesions = []
    for _ in range(count):
        site = str(rng.choice(SITES, p=[0.4, 0.25, 0.35]))
        diameter = float(np.exp(rng.uniform(np.log(5.0), np.log(40.0))))
        if site == "node":
            diameter = min(diameter, 30.0)
        r = diameter / 2
        radii = (r * _u(rng, 0.85, 1.15), r * _u(rng, 0.85, 1.15), r * _u(rng, 0.85, 1.15))
        suv = float(np.exp(rng.uniform(np.log(3.0), np.log(20.0))))
        if site == "liver":
            suv = max(suv, uptake["liver"] * 1.8)
        center = _lesion_site(rng, site, dia, body, neck_z)
        for _ in range(PLACEMENT_TRIES):
            if _fits(site, center, radii, shapes):
                break
            center = _lesion_site(spare, site, dia, body, neck_z)
        else:
            raise RuntimeError(f"no place found for a {diameter:.0f} mm {site} tumour")
        lesions.append(Lesion(center, radii, suv, site))
    voi = (-75.0, 0.0, dia - 55.0)
    return _Scene(shapes, uptake, lesions, body, (0.0, z_top), dia, _u(rng, 0, 12), voi)


def _labels(scene: _Scene, grid: Grid) -> np.ndarray:
    labels = np.zeros(grid.shape, dtype=np.uint8)
    axes = grid.axes()
    for shape in scene.shapes:
        _paint(labels, axes, shape, ORGAN[shape.organ])
    return labels


def _lesion_labels(scene: _Scene, grid: Grid) -> np.ndarray:
    out = np.zeros(grid.shape, dtype=np.int16)
    axes = grid.axes()
    for i, lesion in enumerate(scene.lesions, start=1):
        _paint(out, axes, _Shape("lesion", lesion.center, lesion.radii), i)
    return out


def _ct(scene: _Scene, grid: Grid, rng: np.random.Generator) -> np.ndarray:
    labels = _labels(scene, grid)
    lut = np.array([HU[name] for name in ORGANS], dtype=np.float32)
    hu = lut[labels]
    lesions = _lesion_labels(scene, grid)
    for i, lesion in enumerate(scene.lesions, start=1):
        hu[lesions == i] = {"lung": 35.0, "liver": 20.0, "node": 38.0}[lesion.site]
    hu = ndi.gaussian_filter(hu, sigma=(0.4, 0.6, 0.6))
    hu += rng.normal(0.0, 12.0, size=hu.shape).astype(np.float32)
    return np.asarray(hu, dtype=np.float32)


def _activity(scene: _Scene, pet: Grid, fwhm_mm: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """SUV on the PET grid and the fine-grid tumour label volume's block-majority on the PET grid."""
    f = FINE_FACTOR
    dz, dy, dx = pet.spacing
    fine_spacing = (dz / f, dy / f, dx / f)
    x0, y0, z0 = pet.origin
    shift = [(s - s / f) / 2 for s in (dx, dy, dz)]
    fine = Grid(
        (pet.shape[0] * f, pet.shape[1] * f, pet.shape[2] * f),
        fine_spacing,
        (x0 - shift[0], y0 - shift[1], z0 - shift[2]),
    )
    labels = _labels(scene, fine)
    lut = np.array([scene.uptake[name] for name in ORGANS], dtype=np.float32)
    activity = lut[labels]
    lesions = _lesion_labels(scene, fine)
    for i, lesion in enumerate(scene.lesions, start=1):
        activity[lesions == i] = lesion.suv
    activity *= (1.0 + 0.08 * ndi.gaussian_filter(rng.normal(size=activity.shape), 2.0) * 4).astype(np.float32)
    if scene.breathing_mm > 1:  # respiratory blur along z around the diaphragm
        zs = fine.axes()[0]
        weight = np.clip(1.0 - np.abs(zs - scene.diaphragm_z) / 120.0, 0.0, 1.0)[:, None, None].astype(np.float32)
        size = max(1, round(scene.breathing_mm / fine_spacing[0]))
        moved = ndi.uniform_filter1d(activity, size=size, axis=0)
        activity = activity * (1 - weight) + moved * weight
    sigma = [fwhm_mm / 2.3548 / s for s in fine_spacing]
    activity = ndi.gaussian_filter(activity, sigma=sigma)
    n, r, c = pet.shape
    suv = activity.reshape(n, f, r, f, c, f).mean(axis=(1, 3, 5))
    noise = ndi.gaussian_filter(rng.normal(size=suv.shape), 0.6)
    noise /= noise.std() + 1e-9
    level = float(rng.uniform(0.14, 0.22))
    suv = np.maximum(suv + level * np.sqrt(np.maximum(suv, 0.0)) * noise, 0.0)
    major = np.zeros(pet.shape, dtype=np.int16)
    for i in range(1, len(scene.lesions) + 1):
        frac = (lesions == i).reshape(n, f, r, f, c, f).mean(axis=(1, 3, 5))
        major[(frac >= 0.5) & (major == 0)] = i
    return suv.astype(np.float32), major


def make_pet_ct_phantom(
    seed: int,
    *,
    n_lesions: int | None = None,
    pet_slices: int = 150,
    pet_matrix: int = 128,
    pet_mm: float = 4.0,
    ct_matrix: int = 256,
    ct_mm: float = 1.953125,
    ct_slice_mm: float = 3.0,
    fwhm_mm: float | None = None,
    z_start_mm: float = 0.0,
    progress: Callable[[str], None] | None = None,
) -> PetCtPhantom:
    """A PET/CT phantom from ``seed`` (see the module docstring); the PET covers ``pet_slices`` x ``pet_mm``
    from ``z_start_mm`` above the pelvic floor up (the scene is the same whatever the range), the CT the same
    range on its own (offset) grid."""
    rng = np.random.default_rng(seed)
    z_top = 600.0
    scene = _scene(rng, z_top, n_lesions, placement_rng(seed))
    half = (pet_matrix - 1) * pet_mm / 2
    pet = Grid((pet_slices, pet_matrix, pet_matrix), (pet_mm, pet_mm, pet_mm), (-half, -half, z_start_mm + pet_mm / 2))
    ct_n = int(pet_slices * pet_mm // ct_slice_mm)
    ct_half = (ct_matrix - 1) * ct_mm / 2
    ct_z0 = z_start_mm + ct_slice_mm / 2 + 0.7
    ct = Grid((ct_n, ct_matrix, ct_matrix), (ct_slice_mm, ct_mm, ct_mm), (-ct_half, -ct_half, ct_z0))
    fwhm = float(rng.uniform(5.0, 7.0)) if fwhm_mm is None else fwhm_mm
    if progress:
        progress("ct")
    ct_hu = _ct(scene, ct, rng)
    if progress:
        progress("pet")
    suv, lesion_labels = _activity(scene, pet, fwhm, rng)
    organs = _labels(scene, pet)
    physiology = {k: v for k, v in scene.uptake.items() if k not in ("air",)}
    physiology.update(fwhm_mm=fwhm, breathing_mm=scene.breathing_mm)
    return PetCtPhantom(ct_hu, ct, suv, pet, lesion_labels, organs, scene.lesions, scene.liver_voi, physiology)
