"""Disclosure marks of dubbed media: an invisible watermark in the generated region, a C2PA manifest on files.

Watermark (:func:`mask_blocks`, :func:`embed_watermark`, :func:`read_watermark`)
    invisible-watermark's ``dwtDctSvd`` method (ShieldMnt/invisible-watermark,
    MIT licence): the frame goes to YUV, a chroma plane through a one-level
    Haar DWT (PyWavelets), and each 4×4 block of the LL band (8×8 frame
    pixels) carries one bit by quantisation index modulation of the largest
    singular value of its DCT. Fitted to a live video paste: only the
    blocks inside the paste mask are changed (:func:`mask_blocks`, at
    :data:`EMBED_MASK_LEVEL` or more of :func:`engine.compose.landmark_mask`
    times the fade), both chroma planes carry the bit, the step is
    :data:`STRENGTH`, and the bit of a block is fixed by its place on the
    frame's 8-pixel grid (:data:`KEY`, a 64×64 tile of bits), so a reader
    that finds the mouth again on its own finds the bits without knowing
    the crop; U and V carry independent bits (two key planes), which doubles the
    independent votes that a face gives. The per-block arithmetic is the library's
    (``EmbedDwtDctSvd.diffuse_dct_svd`` / ``infer_dct_svd``), done for all
    blocks at once: the largest singular value of a block's orthonormal
    DCT is that of the block itself, so the DCT drops out (a test checks
    the update against the library's, and the library's reader on our
    marks). Every frame is marked on its own (no state across frames).

    Reading (:func:`read_watermark`) tracks the face in each frame, reads
    the blocks well inside the same mask (:data:`READ_MASK_LEVEL`), sums
    the soft votes of each cell of :data:`KEY` (plane, row, column) over all blocks and frames,
    and tests the signed ranks of the sums against chance
    (:class:`WatermarkReport`).

C2PA (:func:`edit_manifest`, :func:`sign_file`, :func:`read_manifest`)
    c2pa-python (the Content Authenticity Initiative's c2pa-rs bindings,
    MIT or Apache-2.0) writes and checks the manifest: one ``c2pa.opened``
    action on the input video or image (the parent ingredient; the driving
    audio is a component ingredient), then one ``c2pa.edited`` action with
    IPTC digital source type ``trainedAlgorithmicMedia`` that names what
    changed (the mouth and jaw region, driven by which audio), the tool and
    the model with the SHA-256 of its weights and of its model cards. It is
    signed ES256 with the user's certificate chain and key, or with a local
    certificate that :func:`local_signer_files` makes once in
    ``$DUBCAM_HOME/signing``: a leaf under a local CA that no one else
    trusts, so readers see a valid signature by an unverified signer.

:func:`verify` puts both together: the verdict of ``realtime verify``.
"""

from __future__ import annotations

import datetime
import hashlib
import mimetypes
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

GRID = 8
"""Frame pixels per watermark block side (a 4×4 block of the Haar LL band)."""
STRENGTH = 72.0
"""Quantisation step of the largest singular value (invisible-watermark's default is 36). The largest
singular value of a flat block is 8× its mean pixel, and the rule moves it by up to 0.75 steps, so a
block's mean U and V move by up to 6.75 levels at 72 (2.8 on average): faint chroma mottle in flat skin
when zoomed in (by eye on the demo's mouth crops, no more at 72 than at 66). Bits read right on GRID
clips after `realtime run` and a CRF 28 re-encode: 55 % at 36 (U plane only), 57 % at 48, 66–68 % at
60, 72 % at 66, 75 % at 72 (the bundled model of 2026-12-03). With today's model and one key plane each
for U and V, a 4 s GRID output re-encoded at CRF 28 reads 63–64 % at 66 (p 2e-9 to 1e-8 over four runs;
one GRID clip of `tools.disclosure_table` fell to 1e-5) and 65–70 % at 72 (p ≤ 2e-9 on all six GRID
clips)."""
CHANNELS = (1, 2)
"""YUV planes that carry the bits: U and V (H.264 keeps a block's chroma well, and the eye sees it least),
each its own plane of :data:`KEY`."""
EMBED_MASK_LEVEL = 0.5
"""A block is marked when the paste mask (times the fade) is at least this everywhere in it."""
READ_MASK_LEVEL = 0.75
"""A block is read when the mask of the re-tracked face is at least this everywhere in it (well inside
the marked region, so that a slightly different track still reads marked blocks)."""
DETECT_P = 1e-6
"""Verdict "watermarked" when the chance that an unmarked video scores as high is below this (see
:class:`WatermarkReport`: the bits of :data:`KEY` are independent of the picture)."""
MIN_CELLS = 64
"""Fewest voted key cells for a verdict, two per block (U and V): 32 blocks (fewer: too little face to
tell, reported as not found)."""
RADEMACHER_TAIL = 3.1787
"""``1 / (4 P(Z ≥ √2))``: a weighted sum S of independent random signs with Σ a² = 1 has
P(S ≥ x) ≤ this × P(Z ≥ x) for every x (Bentkus & Dzindzalieta 2015, "A tight Gaussian bound for
weighted sums of Rademacher random variables", Bernoulli 21(2)): :func:`signed_rank_p`'s bound
beyond :data:`EXACT_CELLS` cells."""
EXACT_CELLS = 500
"""Up to this many key cells :func:`signed_rank_p` computes the signed-rank null exactly (0.1 s at 500)."""
KEY = np.random.default_rng(int.from_bytes(b"dubcam", "big")).integers(0, 2, (len(CHANNELS), 64, 64)).astype(np.uint8)
"""The mark: the bit that plane ``CHANNELS[i]`` of the block at grid row ``r``, column ``c`` carries is
``KEY[i, r % 64, c % 64]``. Independent bits for U and V: the H.264 re-encode that decides whether a bit
survives (a clip's one I-frame, then prediction from it) errs alike on every frame of a still face, so a
cell's votes over frames are not independent draws; U and V of one block err far less alike. On a 4 s
GRID output re-encoded at CRF 28 (four runs each), one bit for both planes gave p 2e-8 to 5e-7, one per
plane 2e-9 to 1e-8."""
DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
"""IPTC digital source type of the edit (C2PA 2.x, ``c2pa.edited``'s ``digitalSourceType``)."""
TOOL = "dubcam"
SIGNING_DIR = "signing"
"""Folder of :func:`local_signer_files` under ``$DUBCAM_HOME``."""
UNVERIFIED_SIGNER = "the signer is not verified: a local key that dubcam made on this machine"


class ProvenanceError(ValueError):
    """A mark could not be written or read (bad certificate or key, unreadable file)."""


# -- watermark ---------------------------------------------------------------------------------

def mask_blocks(landmarks: np.ndarray, box, shape: tuple[int, ...], level: float) -> np.ndarray:
    """``[H // GRID, W // GRID]`` bool: the grid blocks inside the paste mask at ``level`` or more.

    The mask is :func:`engine.compose.landmark_mask` of ``landmarks`` (``[478, 2]`` face-mesh
    points, frame pixels), sampled every ``GRID / 4`` pixels on the frame's grid, and a block
    counts when all 16 of its samples reach ``level``. Only blocks wholly inside ``box`` (an
    ``engine.face.Box``, the crop the face was pasted into) less the mask's border taper can
    count, so a marked block never leaves the pasted region. ``shape``: the frame's (H, W, ...).
    Levels above 1 select nothing.
    """
    from engine.compose import MASK_BORDER, landmark_mask
    from engine.face import Box, box_pixels

    h, w = shape[:2]
    out = np.zeros((h // GRID, w // GRID), bool)
    if level > 1:
        return out
    x0, y0, x1, y1 = box_pixels(box)
    inset = int(np.ceil(MASK_BORDER * max(x1 - x0, y1 - y0)))
    c0, r0 = max(0, -(-(x0 + inset) // GRID)), max(0, -(-(y0 + inset) // GRID))
    c1, r1 = min(w // GRID, (x1 - inset) // GRID), min(h // GRID, (y1 - inset) // GRID)
    if c1 - c0 < 2 or r1 - r0 < 2:
        return out
    m = landmark_mask(landmarks, Box(c0 * GRID, r0 * GRID, c1 * GRID, r1 * GRID),
                      (4 * (r1 - r0), 4 * (c1 - c0)))
    out[r0:r1, c0:c1] = m.reshape(r1 - r0, 4, c1 - c0, 4).min(axis=(1, 3)) >= level
    return out


def _region(frame: np.ndarray, blocks: np.ndarray):
    """The bounding rectangle of ``blocks`` (block units) and its pixels in YUV float32, or None."""
    rows, cols = np.flatnonzero(blocks.any(axis=1)), np.flatnonzero(blocks.any(axis=0))
    if rows.size == 0:
        return None
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    region = frame[r0 * GRID: r1 * GRID, c0 * GRID: c1 * GRID]
    return (r0, r1, c0, c1), cv2.cvtColor(np.ascontiguousarray(region), cv2.COLOR_RGB2YUV).astype(np.float32)


def _ll_blocks(plane: np.ndarray):
    """One-level Haar DWT of ``plane``: its LL band as ``[rows, cols, 4, 4]`` blocks (a view) and the details."""
    import pywt

    ll, details = pywt.dwt2(plane, "haar")
    b = GRID // 2
    return ll.reshape(ll.shape[0] // b, b, ll.shape[1] // b, b).swapaxes(1, 2), ll, details


def _key_bits(sel: np.ndarray, r0: int, c0: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The key cells of the selected blocks ``sel`` of a region at grid row ``r0``, column ``c0``.

    Returns ``(rows, cols, bits)``: the blocks' rows and columns on the key's 64×64 tile (``[n]``
    int) and their bits, ``[n, len(CHANNELS)]`` uint8 (:data:`KEY`), blocks in ``np.nonzero`` order.
    """
    rr, cc = np.nonzero(sel)
    rr, cc = (rr + r0) % 64, (cc + c0) % 64
    return rr, cc, KEY[:, rr, cc].T


def embed_watermark(frame: np.ndarray, blocks: np.ndarray, inplace: bool = False) -> np.ndarray:
    """Mark the grid blocks ``blocks`` (:func:`mask_blocks`) of ``frame``.

    Args:
        frame: H×W×3 uint8 RGB.
        blocks: ``[H // GRID, W // GRID]`` bool.
        inplace: write into ``frame`` (the pipeline's freshly composited frame) instead of a copy.
    Returns: the marked H×W×3 uint8 frame; every pixel outside the selected blocks is ``frame``'s.
    """
    import pywt

    out = frame if inplace else frame.copy()
    found = _region(frame, blocks)
    if found is None:
        return out
    (r0, r1, c0, c1), yuv = found
    sel = blocks[r0:r1, c0:c1]
    _, _, bits = _key_bits(sel, r0, c0)
    for plane, ch in enumerate(CHANNELS):
        view, ll, details = _ll_blocks(yuv[..., ch])
        x = view[sel]  # [n, 4, 4]
        u, s, vt = np.linalg.svd(x)
        s0 = s[:, 0]
        # EmbedDwtDctSvd.diffuse_dct_svd: s0 -> (s0 // scale + 0.25 + 0.5·bit)·scale, on the block's
        # orthonormal DCT, whose singular values and (rotated) vectors are the block's own
        target = (np.floor(s0 / STRENGTH) + 0.25 + 0.5 * bits[:, plane]) * STRENGTH
        view[sel] = x + (target - s0)[:, None, None] * (u[:, :, 0, None] * vt[:, 0, None, :])
        yuv[..., ch] = pywt.idwt2((ll, details), "haar")
    np.rint(yuv, out=yuv)
    np.clip(yuv, 0, 255, out=yuv)
    marked = cv2.cvtColor(yuv.astype(np.uint8), cv2.COLOR_YUV2RGB)
    px = np.repeat(np.repeat(sel, GRID, axis=0), GRID, axis=1)
    np.copyto(out[r0 * GRID: r1 * GRID, c0 * GRID: c1 * GRID], marked, where=px[:, :, None])
    return out


def read_blocks(frame: np.ndarray, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the grid blocks ``blocks`` of ``frame`` say: ``(cell, vote, match)``, each ``[n, len(CHANNELS)]``.

    One row per selected block, one column per plane of :data:`CHANNELS`. The residue
    ``r = (s0 mod scale) / scale`` of the largest singular value of the block's LL band in that
    plane is read; ``EmbedDwtDctSvd.infer_dct_svd`` reads bit 1 where ``r > 1/2``. ``match``
    (bool): the bit read is :data:`KEY`'s. ``vote`` (float in [-1, 1]): ``cos(2π(r - 1/4))``
    (+1 on bit 0's lattice point, -1 on bit 1's, 0 half-way), its sign turned by the key bit: a
    soft read, which counts a read near the decision boundary less; flipping a key bit negates
    its vote. ``cell`` (int64): the flat index of the key bit in :data:`KEY`
    (``plane · 4096 + (row % 64) · 64 + col % 64``).
    """
    found = _region(frame, blocks)
    n = len(CHANNELS)
    if found is None:
        return np.zeros((0, n), np.int64), np.zeros((0, n)), np.zeros((0, n), bool)
    (r0, r1, c0, c1), yuv = found
    sel = blocks[r0:r1, c0:c1]
    rr, cc, bits = _key_bits(sel, r0, c0)
    cells = np.ravel_multi_index((np.arange(n)[None, :], rr[:, None], cc[:, None]), KEY.shape)
    votes = np.zeros((rr.size, n))
    for plane, ch in enumerate(CHANNELS):
        view, _, _ = _ll_blocks(yuv[..., ch])
        votes[:, plane] = np.cos(2 * np.pi * (np.linalg.svd(view[sel], compute_uv=False)[:, 0] / STRENGTH - 0.25))
    votes *= np.where(bits == 0, 1.0, -1.0)
    return cells, votes, votes > 0


def signed_rank_p(sums: np.ndarray) -> float:
    """The chance that random signs score as high as ``sums``: the p-value of the verdict.

    Wilcoxon's signed-rank test: ``W = Σ rank(|s_i|)`` over the positive sums (mid-ranks for ties;
    zero sums are dropped) against its null, where each sign is a fair coin independent of the
    magnitudes: the null of an unmarked video, since flipping a key cell's bit negates its sum
    whatever the picture. Up to :data:`EXACT_CELLS` cells the null distribution is computed exactly
    (a recursion over the ranks, in half-rank units); beyond, ``P ≤ RADEMACHER_TAIL · P(Z ≥ z)`` of the
    standardised ``2W − Σ rank`` (:data:`RADEMACHER_TAIL`), a bound that is far below
    :data:`DETECT_P` for any marked face that large. Ranks keep the test robust to the few cells that
    a re-encode flips consistently: a sign test ignores how sure each cell is, a weighted sum is
    dragged by the flipped ones.

    Args: sums: ``[n]`` float, one summed vote per key cell. Returns a float in (0, 1].
    """
    from scipy.stats import norm, rankdata

    s = np.asarray(sums, np.float64)
    s = s[s != 0]
    if s.size == 0:
        return 1.0
    ranks = rankdata(np.abs(s))
    if s.size > EXACT_CELLS:
        t = float(np.sum(ranks * np.sign(s)))
        return float(min(1.0, RADEMACHER_TAIL * norm.sf(t / np.sqrt(np.sum(ranks ** 2)))))
    half = np.rint(2 * ranks).astype(np.int64)  # mid-ranks are multiples of 1/2
    dist = np.zeros(int(half.sum()) + 1)
    dist[0], top = 1.0, 0
    for r in half:  # the distribution of the positive cells' rank sum, one fair sign at a time
        dist[r: top + r + 1] += dist[: top + 1]
        dist[: top + r + 1] *= 0.5
        top += r
    w = int(half[s > 0].sum())
    return float(min(1.0, dist[w:].sum()))


@dataclass
class WatermarkReport:
    """What :func:`read_watermark` found.

    frames: frames read; faces: frames with a face; reads: bit reads (two
    per block: U and V); bit_accuracy: fraction of bit reads that match
    :data:`KEY` (0.5 when unmarked); cells: distinct cells of :data:`KEY`
    voted on (two per grid block unless the face spans more than the key's
    64-block tile);
    vote_accuracy: fraction of them whose vote (summed over all their blocks
    and frames) matches; p_value: a bound on the chance that an unmarked
    video scores as high (:func:`signed_rank_p`: flipping a cell's key bit
    flips its vote, so in an unmarked video each vote's sign is a fair coin
    whatever the picture); present: the verdict (``p_value < DETECT_P``
    with at least :data:`MIN_CELLS` cells).
    """

    frames: int = 0
    faces: int = 0
    reads: int = 0
    bit_accuracy: float = 0.5
    cells: int = 0
    vote_accuracy: float = 0.5
    p_value: float = 1.0

    @property
    def present(self) -> bool:
        return self.cells >= MIN_CELLS and self.p_value < DETECT_P

    @property
    def confidence(self) -> float:
        """1 − p-value: how sure the verdict "watermarked" is (0 when nothing matches beyond chance)."""
        return 1.0 - self.p_value


def read_watermark(frames, max_frames: int = 300) -> WatermarkReport:
    """Look for the watermark in ``frames``: an iterable of ``(rgb uint8 H×W×3, t seconds)``.

    Each frame's face is tracked (MediaPipe, ``engine.face.FaceTracker``), its mask blocks at
    :data:`READ_MASK_LEVEL` are read (:func:`read_blocks`), and every cell of :data:`KEY` gets the
    sum of the (soft) votes of its blocks over the first ``max_frames`` frames (cells, not blocks:
    two blocks of one cell carry the same bit, so only cells are independent under the null; U and V
    of a block are two cells); a
    cell matches when its sum is positive, ties count half; the verdict is :func:`signed_rank_p`'s.
    """
    from engine.face import FaceTracker

    rep = WatermarkReport()
    sums: dict[int, float] = {}
    matched = 0.0
    with FaceTracker() as tracker:
        for frame, t in frames:
            if rep.frames >= max_frames:
                break
            rep.frames += 1
            face = tracker.track(frame, t)
            if face is None:
                continue
            rep.faces += 1
            blocks = mask_blocks(face.landmarks, face.box, frame.shape, READ_MASK_LEVEL)
            cells, votes, match = read_blocks(frame, blocks)
            rep.reads += votes.size
            matched += float(match.sum())
            for i, v in zip(cells.ravel().tolist(), votes.ravel().tolist()):
                sums[i] = sums.get(i, 0.0) + v
    if rep.reads:
        rep.bit_accuracy = matched / rep.reads
    if sums:
        v = np.array(list(sums.values()))
        rep.cells, rep.vote_accuracy = v.size, float((v > 0).sum() + 0.5 * (v == 0).sum()) / v.size
        rep.p_value = signed_rank_p(v)
    return rep


# -- C2PA ----------------------------------------------------------------------------------------

def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_private(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` atomically with permissions ``mode``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


LOCAL_ORGANIZATION = "dubcam local signer (not verified)"
"""Organisation name in the local certificates: how a reader tells a local signature (:func:`read_manifest`)."""


def make_certificate_chain(folder: str | Path, organization: str, common_name: str) -> tuple[Path, Path]:
    """Make an ES256 signing chain in ``folder``: ``(chain.pem, key.pem)``; the CA's key is not kept.

    The leaf (P-256, digitalSignature, extended key usage emailProtection,
    subject and authority key identifiers: what c2pa-rs accepts from a
    signer) is issued by a CA of the same ``organization``; ``chain.pem``
    holds leaf then CA, ``key.pem`` the leaf's PKCS#8 key (mode 0600). Both
    files are written atomically. Made with the ``cryptography`` library.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)])

    def usage(**on) -> x509.KeyUsage:
        names = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                 "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
        return x509.KeyUsage(**{n: on.get(n, False) for n in names})

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    valid = dict(not_valid_before=now - datetime.timedelta(days=1), not_valid_after=now + datetime.timedelta(days=3650))
    ca = (x509.CertificateBuilder(subject_name=name(f"{organization} CA"), issuer_name=name(f"{organization} CA"),
                                  public_key=ca_key.public_key(), serial_number=x509.random_serial_number(), **valid)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(usage(key_cert_sign=True, crl_sign=True), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder(subject_name=name(common_name), issuer_name=ca.subject,
                                    public_key=key.public_key(), serial_number=x509.random_serial_number(), **valid)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage(digital_signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    chain_path, key_path = folder / "chain.pem", folder / "key.pem"
    _write_private(key_path, key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()), 0o600)
    _write_private(chain_path, leaf.public_bytes(pem) + ca.public_bytes(pem), 0o644)
    return chain_path, key_path


def local_signer_files(home: str | Path | None = None) -> tuple[Path, Path]:
    """The local signing chain and key, made once (:func:`make_certificate_chain`) in ``home/signing``.

    ``home`` defaults to ``$DUBCAM_HOME`` (``~/.cache/dubcam``). Its
    organisation is :data:`LOCAL_ORGANIZATION`: the signature proves only
    that the same key signed, not who holds it.
    """
    if home is None:
        from engine.backends.onnx_backend import dubcam_home

        home = dubcam_home()
    folder = Path(home) / SIGNING_DIR
    chain_path, key_path = folder / "chain.pem", folder / "key.pem"
    if chain_path.is_file() and key_path.is_file():
        return chain_path, key_path
    return make_certificate_chain(folder, LOCAL_ORGANIZATION, f"dubcam on {os.uname().nodename}")


@dataclass
class Signer:
    """A C2PA signer: ``chain`` (PEM certificates, leaf first), ``key`` (PEM private key), ``alg``.

    ``local``: made by :func:`local_signer_files` (an unverified signer).
    Build with :func:`load_signer`.
    """

    chain: bytes
    key: bytes
    alg: str
    local: bool

    def c2pa(self):
        """A ``c2pa.Signer`` for this certificate and key (no timestamp authority)."""
        import c2pa

        try:
            return c2pa.Signer.from_info(c2pa.C2paSignerInfo(self.alg, self.chain, self.key, None))
        except c2pa.C2paError as e:
            raise ProvenanceError(f"the signing certificate or key was refused: {e}") from e


def load_signer(cert: str | Path | None = None, key: str | Path | None = None,
                home: str | Path | None = None) -> Signer:
    """The signer for C2PA manifests: the user's ``cert`` (PEM chain, leaf first) and ``key``, or the local one.

    The algorithm follows the key: ES256/384/512 for EC P-256/384/521, PS256
    for RSA, Ed25519. Raises :class:`ProvenanceError` when only one of the
    two is given or a file is not a PEM certificate / key;
    FileNotFoundError when one is missing.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if (cert is None) != (key is None):
        raise ProvenanceError("--sign-cert and --sign-key go together")
    local = cert is None
    if local:
        cert, key = local_signer_files(home)
    chain, key_bytes = Path(cert).read_bytes(), Path(key).read_bytes()
    try:
        x509.load_pem_x509_certificates(chain)
    except ValueError as e:
        raise ProvenanceError(f"{cert}: not a PEM certificate chain ({e})") from e
    try:
        private = serialization.load_pem_private_key(key_bytes, password=None)
    except (ValueError, TypeError) as e:
        raise ProvenanceError(f"{key}: not an unencrypted PEM private key ({e})") from e
    if isinstance(private, ec.EllipticCurvePrivateKey):
        alg = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}.get(private.curve.name)
    elif isinstance(private, rsa.RSAPrivateKey):
        alg = "ps256"
    elif isinstance(private, ed25519.Ed25519PrivateKey):
        alg = "ed25519"
    else:
        alg = None
    if alg is None:
        raise ProvenanceError(f"{key}: a key C2PA cannot sign with (use EC P-256/384/521, RSA or Ed25519)")
    return Signer(chain, key_bytes, alg, local)


def _model_entry(checkpoint: Path, cards: list[Path]) -> dict:
    """The model's part of the edit action: its file's SHA-256 (each file's, for a build folder) and its cards'."""
    if checkpoint.is_dir():
        digest = {f.name: sha256_file(f) for f in sorted(checkpoint.iterdir()) if f.is_file()}
    else:
        digest = sha256_file(checkpoint)
    return {"checkpoint": checkpoint.name, "sha256": digest,
            "model_cards": [{"name": c.name, "sha256": sha256_file(c)} for c in cards if c.is_file()]}


def edit_manifest(title: str, video: Path, audio: Path, checkpoint: Path, model_cards: list[Path],
                  version: str, watermark: bool, audio_title: str | None = None) -> dict:
    """The C2PA manifest definition (c2pa-python's JSON) of one dubbed file.

    Args:
        title: the output's name.
        video, audio: the input face video/image and the driving speech (their
            names and SHA-256 go in the edit action; the files become
            ingredients in :func:`sign_file`).
        checkpoint, model_cards: the generator's weights and its model card(s).
        version: dubcam's version.
        watermark: whether the frames carry the invisible watermark.
        audio_title: what to call the audio (e.g. ``'text "…" spoken by espeak-ng'``).
    """
    edit = {
        "action": "c2pa.edited",
        "digitalSourceType": DIGITAL_SOURCE_TYPE,
        "softwareAgent": {"name": TOOL, "version": version},
        "description": "the mouth and jaw region of the face was re-rendered by a lip-sync generator to match "
                       "the driving speech; everything outside the paste mask is the input's",
        "parameters": {
            "region": "mouth and jaw (inside the feathered paste mask of each frame's face landmarks)",
            "driving_audio": {"name": audio_title or audio.name, "sha256": sha256_file(audio)},
            "model": _model_entry(checkpoint, model_cards),
            "watermark": ("invisible-watermark dwtDctSvd in the U and V planes of the re-rendered region, "
                          "bits keyed by position; check with `realtime verify`") if watermark else "none",
            "ingredientIds": ["face"],
        },
    }
    return {
        "claim_generator_info": [{"name": TOOL, "version": version}],
        "title": title,
        "assertions": [{"label": "c2pa.actions", "data": {"actions": [
            {"action": "c2pa.opened", "parameters": {"ingredientIds": ["face"]}}, edit]}}],
    }


def _mime(path: Path) -> str | None:
    return mimetypes.guess_type(path.name)[0]


def sign_file(path: str | Path, manifest: dict, signer: Signer, parent: Path, components: list[Path] = ()) -> None:
    """Embed ``manifest`` (:func:`edit_manifest`), signed by ``signer``, in the mp4 ``path``, in place and atomically.

    ``parent``: the input video/image, the parent ingredient (label
    ``face``); ``components``: other inputs (the driving audio). The signed
    file is written beside ``path`` and renamed over it, so ``path`` is
    either the unsigned or the signed file, never half of one. Raises
    :class:`ProvenanceError` when c2pa refuses.
    """
    import c2pa

    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name, suffix=".c2pa")
    os.close(fd)
    try:
        with c2pa.Builder(manifest) as builder:
            for ing, rel, label in [(parent, "parentOf", "face"), *[(c, "componentOf", None) for c in components]]:
                info = {"title": ing.name, "relationship": rel, **({"label": label} if label else {})}
                with open(ing, "rb") as f:
                    builder.add_ingredient(info, _mime(ing) or "application/octet-stream", f)
            with open(path, "rb") as src, open(tmp, "w+b") as dst:
                builder.sign(signer.c2pa(), "video/mp4", src, dst)
        os.chmod(tmp, os.stat(path).st_mode & 0o7777)  # mkstemp's 0600 would make the output private
        os.replace(tmp, path)
    except c2pa.C2paError as e:
        raise ProvenanceError(f"C2PA signing of {path} failed: {e}") from e
    finally:
        Path(tmp).unlink(missing_ok=True)


@dataclass
class ManifestReport:
    """What :func:`read_manifest` found.

    present: a C2PA manifest is embedded; state: c2pa's validation state
    (``Valid``: signature and hashes check out; ``Trusted``: also a trusted
    signer; ``Invalid``); signer: issuer and common name of the signing
    certificate; by_dubcam: its edit action is dubcam's, with the trained
    algorithmic media source type; local_signer: signed by a local dubcam
    key (not verified); failures: validation failure codes; note: why
    nothing could be read, if so; actions: the active manifest's actions.
    """

    present: bool = False
    state: str | None = None
    signer: str | None = None
    by_dubcam: bool = False
    local_signer: bool = False
    failures: list[str] = field(default_factory=list)
    note: str | None = None
    actions: list[dict] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return self.present and self.state in ("Valid", "Trusted")


def read_manifest(path: str | Path) -> ManifestReport:
    """Read and validate the C2PA manifest of ``path`` (any format c2pa reads; others: not present, with a note)."""
    import c2pa

    rep = ManifestReport()
    try:
        reader = c2pa.Reader.try_create(str(path))
    except c2pa.C2paError.NotSupported:
        rep.note = "C2PA cannot carry a manifest in this format"
        return rep
    except c2pa.C2paError as e:
        rep.present, rep.state, rep.note = True, "Invalid", f"unreadable manifest: {e}"
        return rep
    if reader is None:
        return rep
    with reader:
        rep.present, rep.state = True, reader.get_validation_state()
        manifest = reader.get_active_manifest() or {}
        results = reader.get_validation_results() or {}
    active = results.get("activeManifest", results) if isinstance(results, dict) else {}
    rep.failures = [f.get("code", "?") for f in active.get("failure", [])] if isinstance(active, dict) else []
    info = manifest.get("signature_info") or {}
    rep.signer = ", ".join(x for x in (info.get("common_name"), info.get("issuer")) if x) or None
    rep.local_signer = info.get("issuer") == LOCAL_ORGANIZATION
    for a in manifest.get("assertions", []):
        if str(a.get("label", "")).startswith("c2pa.actions"):
            rep.actions += a.get("data", {}).get("actions", [])
    rep.by_dubcam = any(a.get("action") == "c2pa.edited" and a.get("digitalSourceType") == DIGITAL_SOURCE_TYPE
                        and (a.get("softwareAgent") or {}).get("name") == TOOL for a in rep.actions)
    return rep


@dataclass
class Verdict:
    """``realtime verify``'s answer: the two reports, ``dubbed`` and a one-line ``line``."""

    manifest: ManifestReport
    watermark: WatermarkReport
    dubbed: bool
    line: str


def verify(path: str | Path, max_frames: int = 300) -> Verdict:
    """Check ``path`` (a video or an image) for dubcam's marks: the C2PA manifest and the watermark.

    Dubbed when a manifest says a dubcam edit (valid or not: an invalid one
    is named) or the watermark is present. Raises FileNotFoundError and
    ``engine.media.MediaError`` for a missing or undecodable file.
    """
    from engine.media import read_frames

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    manifest = read_manifest(path)
    mark = read_watermark(read_frames(path), max_frames=max_frames)
    dubbed = manifest.by_dubcam or mark.present
    if dubbed:
        how = []
        if manifest.by_dubcam:
            how.append("C2PA manifest " + ("valid" if manifest.valid else f"INVALID ({manifest.state})")
                       + (f", {UNVERIFIED_SIGNER}" if manifest.local_signer else ""))
        if mark.present:
            how.append(f"watermark (confidence {mark.confidence:.6f})")
        line = "dubbed by dubcam: " + "; ".join(how)
    else:
        line = "no marks found"
    return Verdict(manifest, mark, dubbed, line)
