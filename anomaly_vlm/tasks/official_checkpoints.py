"""``make official-checkpoints``: download the authors' released weights of the trained methods.

Every file a method lists in its :attr:`~anomaly_vlm.methods.base.AnomalyMethod.official_weights` with a
stable address (a commit-pinned repository file, a Hugging Face mirror) is downloaded into
``<dir>/<method>/<file>`` (``--dir``, default ``$ANOMALY_VLM_WEIGHTS`` or ``weights/official``):

* with a progress bar, into ``<file>.part``; a partial file left by an interrupted transfer is resumed
  with an HTTP range request (a server that ignores the range sends the whole file again);
* verified before it takes its name: against the pinned SHA-256, or the git blob id where the file sits
  in a git repository at a pinned commit; a mismatch deletes the download and fails. A file with neither
  pin is checked for its method's key layout instead (its shapes are checked on first load);
* a file already in place is verified, not downloaded again.

``--path <method> <data>`` prints where the release file that ``reproduce-<method>-<data> CKPT=official``
tests lies (the weights trained on the other dataset), and fails with one line when it is not there yet.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from anomaly_vlm.methods.official_weights import OfficialWeights, ReleaseFile, flatten, method_classes
from anomaly_vlm.untrusted import UntrustedFileError, load_torch_file, sha256_file

DEFAULT_DIR = Path("weights") / "official"
CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A release file could not be fetched or does not verify (the message is one line)."""


def weights_dir(value: str | os.PathLike | None = None) -> Path:
    """The folder of the release files: ``value``, else ``$ANOMALY_VLM_WEIGHTS``, else ``weights/official``
    (relative to the working directory)."""
    return Path(value or os.environ.get("ANOMALY_VLM_WEIGHTS") or DEFAULT_DIR).expanduser()


def releases() -> Iterator[tuple[str, OfficialWeights]]:
    """``(method name, official weights)`` of every ``method=`` whose class declares released files."""
    for name, cls in method_classes().items():
        weights = getattr(cls, "official_weights", None)
        if weights is not None and weights.files:
            yield name, weights


def git_blob_id(path: Path) -> str:
    """The id git gives the file's content (SHA-1 of ``blob <size>\\0`` + content)."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())  # noqa: S324 - git's id, not security
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, file: ReleaseFile, weights: OfficialWeights | None = None) -> str:
    """Check a downloaded file against its pin (or, unpinned, its key layout); returns how it was checked.

    Raises:
        DownloadError: the checksum differs, or the file is not the method's release format.
    """
    if file.sha256:
        actual = sha256_file(path)
        if actual != file.sha256:
            raise DownloadError(
                f"{path}: SHA-256 {actual[:16]}... is not the pinned {file.sha256[:16]}... of {file.name}"
            )
        return "SHA-256 verified"
    if file.git_blob:
        actual = git_blob_id(path)
        if actual != file.git_blob:
            raise DownloadError(
                f"{path}: git blob id {actual[:12]}... is not the pinned {file.git_blob[:12]}... "
                f"of {file.name}"
            )
        return "git blob id verified"
    if weights is not None:
        try:
            payload = load_torch_file(path, what=str(path))
        except UntrustedFileError as error:
            raise DownloadError(str(error)) from None
        if not isinstance(payload, dict) or not weights.recognises(flatten(payload)):
            raise DownloadError(f"{path} is not a {weights.release} release file (its keys do not match)")
        return "key layout verified (no pinned checksum; shapes are checked on first load)"
    return "not verified"


def _progress(total: int | None, initial: int, name: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=name,
        disable=not enabled,
    )


def fetch(url: str, dest: Path, progress: bool = True, timeout: float = 60.0) -> None:
    """Download ``url`` into ``dest.part`` (resuming what is there), then leave it as ``dest.part``.

    Raises:
        DownloadError: a network or HTTP error (the partial file is kept, so a rerun resumes).
    """
    part = dest.with_name(dest.name + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - http(s) addresses only
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:
            return  # nothing left to send: the partial file is complete (verified next)
        raise DownloadError(f"{url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        raise DownloadError(f"{url}: {getattr(error, 'reason', error)}") from None
    with response:
        resumed = response.status == 206
        length = response.headers.get("Content-Length")
        total = (int(length) + (have if resumed else 0)) if length else None
        with (
            part.open("ab" if resumed else "wb") as handle,
            _progress(total, have if resumed else 0, dest.name, progress) as bar,
        ):
            try:
                while block := response.read(CHUNK):
                    handle.write(block)
                    bar.update(len(block))
            except (OSError, urllib.error.URLError, http.client.HTTPException) as error:
                raise DownloadError(
                    f"{url}: transfer interrupted after {handle.tell()} bytes ({error}); run again to resume"
                ) from None
    if total is not None and part.stat().st_size < total:
        raise DownloadError(
            f"{url}: transfer ended after {part.stat().st_size} of {total} bytes; run again to resume"
        )


def download(
    file: ReleaseFile,
    folder: Path,
    weights: OfficialWeights | None = None,
    progress: bool = True,
    fetcher: Callable[..., None] = fetch,
) -> tuple[Path, str]:
    """Put one release file into ``folder`` (skipped when it is there and verifies); returns the path and
    how it was verified.

    Raises:
        DownloadError: no address, a transfer that failed (kept for resuming) or a file that does not
            verify (deleted).
    """
    dest = folder / file.name
    if dest.is_file():
        return dest, verify(dest, file, weights) + " (already there)"
    if not file.url:
        raise DownloadError(
            f"{file.name} has no stable download address: get it from {file.manual} into {dest}"
        )
    fetcher(file.url, dest, progress=progress)
    part = dest.with_name(dest.name + ".part")
    try:
        how = verify(part, file, weights)
    except DownloadError:
        part.unlink(missing_ok=True)
        raise
    part.replace(dest)
    return dest, how


def release_for(method: str, data: str) -> tuple[OfficialWeights, ReleaseFile]:
    """The release file ``CKPT=official`` tests on ``data=<data>`` for ``method=<method>``.

    Raises:
        DownloadError: the method has no released weights, or none for that dataset.
    """
    known = dict(releases())
    if method not in known:
        raise DownloadError(f"method={method} has no released weights known here (known: {sorted(known)})")
    weights = known[method]
    for file in weights.files:
        if data in file.tests:
            return weights, file
    raise DownloadError(
        f"method={method} has no released weights for data={data} "
        f"(released: {', '.join(f'{f.name} for {list(f.tests)}' for f in weights.files)})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=None, help="folder of the release files (default: weights/official)")
    parser.add_argument("--method", action="append", help="only this method (repeatable)")
    parser.add_argument("--path", nargs=2, metavar=("METHOD", "DATA"), help="print the CKPT=official file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    folder = weights_dir(args.dir)
    try:
        if args.path:
            return _print_path(folder, *args.path)
        return _download_all(folder, args.method, not args.no_progress)
    except DownloadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _print_path(folder: Path, method: str, data: str) -> int:
    _, file = release_for(method, data)
    path = folder / method / file.name
    if not path.is_file():
        raise DownloadError(
            f"{path} is missing: run `make official-checkpoints` (or get {file.name} from "
            f"{file.url or file.manual} into {path})"
        )
    print(path)
    return 0


def _download_all(folder: Path, methods: list[str] | None, progress: bool) -> int:
    failures = 0
    for name, weights in releases():
        if methods and name not in methods:
            continue
        for file in weights.files:
            try:
                path, how = download(file, folder / name, weights, progress)
                print(f"{name:12s} {file.name}: {how} -> {path}")
            except DownloadError as error:
                failures += 1
                print(f"error: {name} {file.name}: {error}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
