"""Hypothesis strategies for *valid* UnitSpec objects, shared by the property tests.

Valid means: passes ``validate_spec`` in strict mode (the rules for unit files). The
free-text fields (env values, args, cmd) get the awkward characters that reach unit files
in practice: tabs, U+2028, non-ASCII, ``< > &``, quotes, backslashes, ``$$`` and ``%``.
"""

from __future__ import annotations

from hypothesis import strategies as st

from kaylee_sync.spec import App, EnvVar, UnitSpec, Volume, schema

# Any character but C0 controls other than TAB, and no surrogates (not encodable). NEL
# (U+0085) is left out too: YAML 1.1 reads a raw NEL as a line break and PyYAML's
# emitter writes it raw with allow_unicode, so it would not survive the YAML round trip.
_TEXT_CHARS = st.characters(
    exclude_categories=["Cs"],
    exclude_characters=[chr(c) for c in range(0x20) if c != 0x09] + ["\x85"],
)
_AWKWARD = ["\t", "\u2028", "é", "✓", "<", ">", "&", '"', "'", "\\", "$$", "%", " ", "=", "/"]

text = st.one_of(
    st.text(_TEXT_CHARS, max_size=12),
    st.lists(st.sampled_from(_AWKWARD) | st.text("abcXYZ019", max_size=3), max_size=6).map("".join),
)


def _regex(pattern: str) -> st.SearchStrategy[str]:
    return st.from_regex(pattern, fullmatch=True)


names = _regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}")
env_names = _regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}")
images = _regex(r"(docker://|quay\.io/)?[a-z0-9]{1,10}:[A-Za-z0-9._-]{1,8}")
abs_paths = _regex(r"/[A-Za-z0-9_.é✓ -]{0,12}[A-Za-z0-9_é]")
plain_paths = _regex(r"/[A-Za-z0-9_.-]{0,12}")
volume_ids = _regex(r"[A-Za-z0-9_@][A-Za-z0-9_.@-]{0,10}")


@st.composite
def volumes(draw: st.DrawFn) -> Volume:
    """A host volume, a systemd mount service volume or a plugin script volume."""
    kind = draw(st.sampled_from(["host", "mountservice", "plugin"]))
    if kind == "host":
        # Host source and path are Go-%q-quoted when rendered: spaces are fine there.
        return Volume(path=draw(abs_paths), source=draw(abs_paths))
    source = draw(st.just("") | _regex(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,8}"))
    vid = draw(volume_ids)
    if kind == "mountservice":
        driver = "systemd-mountservice-" + draw(_regex(r"[a-z]{1,6}"))
        return Volume(path=draw(plain_paths), id=vid, driver=driver, source=source)
    options = draw(st.just("") | _regex(r"-o [a-z]{1,5}( -v)?"))
    driver = draw(_regex(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,8}"))
    return Volume(path=draw(plain_paths), id=vid, driver=driver, source=source, options=options)


@st.composite
def apps(draw: st.DrawFn) -> App:
    return App(
        image=draw(images),
        cmd=draw(st.just("") | text.filter(bool)),
        args=tuple(draw(st.lists(text, max_size=4))),
    )


@st.composite
def unit_specs(draw: st.DrawFn) -> UnitSpec:
    """A UnitSpec that passes every unit-file rule, placement combinations included."""
    placement = draw(st.sampled_from(["free", "global", "pinned"]))
    if placement == "free":
        replicas = draw(st.integers(0, 5) | st.integers(0, schema.MAX_REPLICAS))
    else:  # global and machineId units run (at most) one instance per machine
        replicas = draw(st.integers(0, 1))
    max_per_host = draw(st.integers(0, replicas)) if replicas else 0
    return UnitSpec(
        name=draw(names),
        replicas=replicas,
        max_replicas_per_host=max_per_host,
        engine=draw(st.sampled_from(["", "rkt"])),
        env_files=tuple(draw(st.lists(abs_paths, max_size=2))),
        env=tuple(draw(st.lists(st.builds(EnvVar, env_names, text), max_size=3))),
        volumes=tuple(draw(st.lists(volumes(), max_size=3))),
        net=draw(st.sampled_from(["", "flannel", "host", "flannel,default"])),
        apps=tuple(draw(st.lists(apps(), min_size=1, max_size=3))),
        args=tuple(draw(st.lists(text, max_size=3))),
        machine=tuple(draw(st.lists(_regex(r"[a-z]{1,5}=[A-Za-z0-9._-]{1,6}"), max_size=2))),
        machine_id=draw(_regex(r"[0-9a-f]{12,32}")) if placement == "pinned" else "",
        global_=placement == "global",
        conflicts=tuple(draw(st.lists(_regex(r"[A-Za-z0-9_.*?\[\]-]{1,10}"), max_size=2))),
    )
