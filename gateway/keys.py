"""The gateway's Ed25519 signing key (upstream envelopes, SPEC section 10).

    key = SigningKey.load_or_create(path)     # created on first run, file mode 0600 (PKCS#8 PEM)
    key.sign(message) -> 64 bytes; key.key_id -> 16 hex chars; key.public_pem() -> str
    pub = load_public_key(text_or_path)       # PEM SubjectPublicKeyInfo or 64 hex characters
    pub.verify(signature, message)            # raises cryptography's InvalidSignature

`key_id` = the first 8 bytes of SHA-256(raw 32-byte public key), in hex: it names the key in every
signed envelope, so a county that holds several gateways' keys (or a rotated one) picks the right one.

Failures the key file survives or reports:
- missing file: a new key is generated and written atomically (temporary file + rename) with mode 0600;
- a file readable by group or others: refused (KeyFileError), like ssh does, rather than silently used;
- a file that is not an unencrypted Ed25519 PKCS#8 PEM: KeyFileError naming the file.

Printing the public key (PEM; `--hex` for the raw 32 bytes): `fengqiao gateway pubkey --config FILE`
(the key named by the config), or `python -m gateway.keys --key FILE` (any key file).
"""

import hashlib
import os
import stat
import sys

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

DEFAULT_KEY_FILE = "gateway_signing_key.pem"


class KeyFileError(RuntimeError):
    """The signing or public key file is unusable (permissions, format); the message says which file."""


def key_id_of(public_raw):
    """16 hex characters naming a public key: SHA-256(raw 32 bytes)[0:8]."""
    return hashlib.sha256(public_raw).digest()[:8].hex()


class PublicKey:
    """An Ed25519 public key with its key id."""

    def __init__(self, key):
        self._key = key
        self.raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.key_id = key_id_of(self.raw)

    def verify(self, signature, message):
        """Raises cryptography.exceptions.InvalidSignature when the signature does not verify."""
        self._key.verify(signature, message)

    def pem(self):
        return self._key.public_bytes(serialization.Encoding.PEM,
                                      serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


class SigningKey:
    """The gateway's private key; `public` is its PublicKey."""

    def __init__(self, private_key, path=None):
        self._key = private_key
        self.path = path
        self.public = PublicKey(private_key.public_key())
        self.key_id = self.public.key_id

    @classmethod
    def generate(cls):
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, path):
        return cls(load_or_create_private_key(path, Ed25519PrivateKey, KeyFileError, "signing key"), str(path))

    def sign(self, message):
        return self._key.sign(message)

    def public_pem(self):
        return self.public.pem()


def write_private_file(path, data):
    """Write `data` (bytes or str) to `path` as the owner's alone (mode 0600; a missing directory
    0700), atomically: a temporary file, fsync, rename. A crash leaves the old file or the new
    one, never half of one; a failed write leaves no temporary file behind. Used for every
    secret or signed file the gateway and the tools write (keys, bundles, chain markers)."""
    path = str(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    tmp = "%s.tmp%d" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else bytes(data))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_or_create_private_key(path, key_type, error, what):
    """The `key_type` private key (cryptography's Ed25519PrivateKey, X25519PrivateKey, ...) in the
    PKCS#8 PEM file `path`, generated and written with write_private_file when the file is
    missing. A file readable by group or others, not an unencrypted PEM key, or a key of another
    type is refused with `error` naming `what` and the file, as ssh refuses such a key."""
    path = str(path)
    if not os.path.exists(path):
        write_private_file(path, key_type.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    st = os.stat(path)
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise error("%s %s is readable by others (mode %o); run: chmod 600 %s"
                    % (what, path, stat.S_IMODE(st.st_mode), path))
    with open(path, "rb") as f:
        data = f.read()
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise error("%s %s is not an unencrypted PEM private key: %s" % (what, path, exc)) from exc
    if not isinstance(key, key_type):
        raise error("%s %s is not an %s key" % (what, path, key_type.__name__.replace("PrivateKey", "")))
    return key


def load_public_key(text_or_path):
    """A PublicKey from PEM text, 64 hex characters, or a file holding either."""
    text = text_or_path
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    if "BEGIN" not in text and not _is_hex64(text.strip()):
        try:
            with open(text) as f:
                text = f.read()
        except OSError as exc:
            raise KeyFileError("cannot read public key %s: %s" % (text_or_path, exc)) from exc
    text = text.strip()
    if "PRIVATE KEY" in text:
        raise KeyFileError("that is the gateway's private key; give its public key (print it with "
                           "`fengqiao gateway pubkey --config FILE`)")
    try:
        if _is_hex64(text):
            key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(text))
        else:
            key = serialization.load_pem_public_key(text.encode("ascii"))
    except (ValueError, TypeError) as exc:
        raise KeyFileError("not an Ed25519 public key (PEM or 64 hex characters): %s" % exc) from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError("the public key is not an Ed25519 key")
    return PublicKey(key)


def _is_hex64(s):
    return len(s) == 64 and all(c in "0123456789abcdefABCDEF" for c in s)


# -- `fengqiao gateway pubkey` -------------------------------------------------------------------

HELP = "print the gateway's Ed25519 public key (for `fengqiao verify --pubkey`)"


def add_arguments(parser):
    parser.add_argument("--key", default=DEFAULT_KEY_FILE,
                        help="signing key file (created with mode 0600 if missing; default %(default)s)")
    parser.add_argument("--hex", action="store_true", help="print the raw key as 64 hex characters, not PEM")


def run(args):
    from tools.errors import CliError

    try:
        key = SigningKey.load_or_create(args.key)
    except KeyFileError as exc:
        raise CliError(str(exc)) from exc
    print(key.public.raw.hex() if args.hex else key.public_pem().rstrip("\n"))
    print("key id %s (%s)" % (key.key_id, key.path), file=sys.stderr)
    return 0


if __name__ == "__main__":  # `python -m gateway.keys --key FILE`
    import argparse

    _p = argparse.ArgumentParser(prog="python -m gateway.keys", description=HELP)
    add_arguments(_p)
    sys.exit(run(_p.parse_args()))
