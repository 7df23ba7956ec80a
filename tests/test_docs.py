"""The worked examples in docs/ are real: the sealing example opens, the signed delivery verifies."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from routing import signing
from routing.sealing import b64url, unb64url

DOCS = Path(__file__).resolve().parent.parent / "docs"


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def sealing_example(marker: str = "def open_event") -> tuple[str, str]:
    """The code block holding `marker` and what the page says it prints (the next `It prints:`)."""
    text = (DOCS / "sealing.md").read_text()
    code = next(b for b in blocks(text, "python") if marker in b)
    printed = text[text.index(code) :].split("It prints:", 1)[1]
    return code, blocks(printed, "")[0].strip()


def envelope_before(code: str) -> dict[str, Any]:
    """The JSON event the page shows just before `code`."""
    text = (DOCS / "sealing.md").read_text()
    event: dict[str, Any] = json.loads(blocks(text[: text.index(code)], "json")[-1])
    return event


@pytest.mark.parametrize("marker", ["def open_event", "def open_hybrid_event"])
def test_sealing_worked_example_runs_and_prints_what_the_page_says(marker: str):
    code, expected = sealing_example(marker)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "docs/sealing.md", "exec"), {"__name__": "docs_example"})
    assert out.getvalue().strip() == expected


# RFC 9180 written out from the RFC's pseudocode (§4, §5.1, §7.1), only for the one suite the
# contract names, so the documented byte layout is checked independently of the library.
KEM_ID, KDF_ID, AEAD_ID = 0x0020, 0x0001, 0x0003


def labeled_extract(suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt or bytes(32), b"HPKE-v1" + suite_id + label + ikm, hashlib.sha256).digest()


def labeled_expand(suite_id: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    labeled = length.to_bytes(2, "big") + b"HPKE-v1" + suite_id + label + info
    return HKDFExpand(hashes.SHA256(), length, labeled).derive(prk)


def rfc9180_open_base(sk: X25519PrivateKey, sealed: bytes, info: bytes) -> bytes:
    enc, ciphertext = sealed[:32], sealed[32:]
    kem_suite = b"KEM" + KEM_ID.to_bytes(2, "big")
    dh = sk.exchange(X25519PublicKey.from_public_bytes(enc))
    pk_rm = sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    eae_prk = labeled_extract(kem_suite, b"", b"eae_prk", dh)
    shared_secret = labeled_expand(kem_suite, eae_prk, b"shared_secret", enc + pk_rm, 32)
    return key_schedule_open(KEM_ID, shared_secret, info, ciphertext)


def key_schedule_open(kem_id: int, shared_secret: bytes, info: bytes, ciphertext: bytes) -> bytes:
    """RFC 9180 §5.1 KeySchedule (mode_base) and a single-shot Open, for KDF 0x0001 / AEAD 0x0003."""
    suite = b"HPKE" + kem_id.to_bytes(2, "big") + KDF_ID.to_bytes(2, "big") + AEAD_ID.to_bytes(2, "big")
    psk_id_hash = labeled_extract(suite, b"", b"psk_id_hash", b"")
    info_hash = labeled_extract(suite, b"", b"info_hash", info)
    context = b"\x00" + psk_id_hash + info_hash  # mode_base
    secret = labeled_extract(suite, shared_secret, b"secret", b"")
    key = labeled_expand(suite, secret, b"key", context, 32)
    base_nonce = labeled_expand(suite, secret, b"base_nonce", context, 12)
    return ChaCha20Poly1305(key).decrypt(base_nonce, ciphertext, b"")  # sequence 0: nonce = base_nonce


def test_sealed_example_is_rfc9180_base_mode_enc_then_ciphertext_base64url_unpadded():
    code, _ = sealing_example()
    private = re.search(r'from_private_bytes\(unb64url\("([^"]+)"\)\)', code)
    assert private is not None
    envelope = json.loads(blocks((DOCS / "sealing.md").read_text(), "json")[0])
    sealed_text = envelope["sealed"]
    # The code block splits the same string over lines; both must be the one delivered value.
    assert "".join(re.findall(r'"([A-Za-z0-9_-]{40,})"', code.split('"sealed":', 1)[1])) == sealed_text
    assert re.fullmatch(r"[A-Za-z0-9_-]+", sealed_text), "base64url alphabet, no padding"
    sk = X25519PrivateKey.from_private_bytes(unb64url(private.group(1)))
    raw_public = sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert envelope["kid"] == b64url(hashlib.sha256(raw_public).digest()[:8])
    plaintext = rfc9180_open_base(sk, unb64url(sealed_text), f"ally-gateway/v1|alice|{envelope['id']}".encode())
    assert json.loads(plaintext)["update_id"] == 912345678
    assert len(unb64url(sealed_text)) == 32 + len(plaintext) + 16
    # The public key the page says is registered is the one that opens it.
    page = (DOCS / "sealing.md").read_text()
    public = b64url(sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    assert f"`server_public_key` is `{public}`" in page.replace("\n", " ")


# X-Wing (draft-connolly-cfrg-xwing-kem), the KEM behind HPKE's MLKEM768-X25519 (draft-ietf-hpke-pq,
# KEM id 0x647a): Decapsulate written out from the draft, on the ML-KEM-768 and X25519 primitives
# alone, so the hybrid example is checked without the library's HPKE.
XWING_KEM_ID = 0x647A
XWING_LABEL = b"\\.//^\\"


def xwing_open_base(mlkem: MLKEM768PrivateKey, x25519: X25519PrivateKey, sealed: bytes, info: bytes) -> bytes:
    enc, ciphertext = sealed[:1120], sealed[1120:]
    ct_m, ct_x = enc[:1088], enc[1088:]
    ss_m = mlkem.decapsulate(ct_m)
    ss_x = x25519.exchange(X25519PublicKey.from_public_bytes(ct_x))
    pk_x = x25519.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    shared_secret = hashlib.sha3_256(ss_m + ss_x + ct_x + pk_x + XWING_LABEL).digest()
    return key_schedule_open(XWING_KEM_ID, shared_secret, info, ciphertext)


def test_hybrid_example_opens_by_an_independent_xwing_and_rfc9180_path():
    code, _ = sealing_example("def open_hybrid_event")
    seed = re.search(r'from_seed_bytes\(\s*unb64url\(\s*"([^"]+)"', code)
    x_private = re.search(r'X25519PrivateKey\.from_private_bytes\(unb64url\("([^"]+)"\)\)', code)
    assert seed is not None and x_private is not None
    envelope = envelope_before(code)
    sealed_text = envelope["sealed"]
    assert "".join(re.findall(r'"([A-Za-z0-9_-]{40,})"', code.split('"sealed":', 1)[1])) == sealed_text
    assert re.fullmatch(r"[A-Za-z0-9_-]+", sealed_text), "base64url alphabet, no padding"
    mlkem = MLKEM768PrivateKey.from_seed_bytes(unb64url(seed.group(1)))
    x25519 = X25519PrivateKey.from_private_bytes(unb64url(x_private.group(1)))
    sealed = unb64url(sealed_text)
    plaintext = xwing_open_base(mlkem, x25519, sealed, f"ally-gateway/v1|bob|{envelope['id']}".encode())
    assert json.loads(plaintext)["update_id"] == 912345679
    assert len(sealed) == 1120 + len(plaintext) + 16
    # The public key is ML-KEM-768 then X25519, 1,216 bytes, and the kid is computed over all of it.
    raw = mlkem.public_key().public_bytes_raw() + x25519.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert len(raw) == 1216
    kid = b64url(hashlib.sha256(raw).digest()[:8])
    assert envelope["kid"] == kid
    assert f"`kid` is `{kid}`" in (DOCS / "sealing.md").read_text().replace("\n", " ")
    # The oracle is not vacuous: another user id in the info does not open.
    with pytest.raises(InvalidTag):
        xwing_open_base(mlkem, x25519, sealed, f"ally-gateway/v1|eve|{envelope['id']}".encode())


def test_delivery_example_and_rotation_overlap_signatures_verify():
    text = (DOCS / "delivery.md").read_text()
    request = blocks(text, "http")[0]
    head, _, body = request.partition("\n\n")
    headers = dict(line.split(": ", 1) for line in head.splitlines()[1:])
    body = body.strip()
    secrets = re.findall(r"`(whsec_[A-Za-z0-9+/=]+)`", text)
    new_secret, old_secret = secrets[0], secrets[1]
    stamp, sig = headers["webhook-timestamp"], headers["webhook-signature"]
    key = base64.b64decode(new_secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{headers['webhook-id']}.{stamp}.{body}".encode(), hashlib.sha256).digest()
    assert sig == "v1," + base64.b64encode(mac).decode()
    assert json.loads(body)["txn_id"] == headers["webhook-id"]
    # The gateway's own signer produces exactly the documented header for these inputs.
    when = dt.datetime.fromtimestamp(int(stamp), dt.UTC)
    assert signing.headers(new_secret, headers["webhook-id"], body, now=when)["webhook-signature"] == sig
    overlap = re.search(r"webhook-signature: (v1,\S+ v1,\S+)", text)
    assert overlap is not None
    first, second = overlap.group(1).split(" ")
    assert first == sig
    assert second == signing.headers(old_secret, headers["webhook-id"], body, now=when)["webhook-signature"]


def test_configuration_page_names_exactly_the_variables_the_gateway_reads():
    source = (DOCS.parent / "foundation" / "config.py").read_text()
    read = set(re.findall(r'"(ALLY_[A-Z_]+)"', source))
    page = (DOCS / "configuration.md").read_text()
    # A/B pairs are written `ALLY_X_CLIENT_ID` / `ALLY_X_CLIENT_SECRET` in one table row.
    documented = set(re.findall(r"`(ALLY_[A-Z_]+[A-Z])`", page))
    assert read - documented == set(), "variables read by foundation/config.py missing from docs/configuration.md"
    assert documented - read == set(), "variables in docs/configuration.md that foundation/config.py does not read"


def test_operations_page_lists_every_metric():
    source = (DOCS.parent / "foundation" / "metrics.py").read_text()
    names = set(re.findall(r'"(ally_[a-z_]+)"', source))
    page = (DOCS / "operations.md").read_text()
    assert names, "no metric found in foundation/metrics.py"
    assert {n for n in names if f"`{n}`" not in page} == set()


def test_relative_links_in_the_docs_and_readmes_lead_somewhere():
    root = DOCS.parent
    pages = [*DOCS.glob("*.md"), root / "README.md", root / "examples" / "README.md"]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#", 1)[0]).resolve()
            if not path.exists():
                broken.append(f"{page.relative_to(root)} → {target}")
    assert broken == []
