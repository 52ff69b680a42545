"""Synthetic but realistic package sets for `fleet_query.py`, determined by a seed.

A fleet's package sets are not random: hosts of one OS release run mostly the same packages
at the same versions (one mirror, one patch cycle), a few hosts lag behind on some packages,
and a few lag on many (unpatched for months). This module builds such a fleet without
storing any data:

* five OS groups (Debian 12 and 11, Ubuntu 22.04, RHEL 9 with rpm, Alpine 3.18 with apk),
  each with its package universe: real packages that advisories name (openssl, curl, glibc,
  ...), with real version histories, plus "filler" packages built from real project names in
  each distribution's naming style (libfoo1, python3-foo, perl-Foo, py3-foo) whose binaries
  share a source package, as they do;
* per host: the group's base set (identical on every host of the group) plus extras, 1,000 to
  1,500 packages in all; 65 % of hosts fully patched, 28 % lagging on 1-8 source packages,
  7 % on 40-150 (one to three versions behind);
* each package as the inventory plugin's item (ecosystem, name, version, architecture,
  source, source_version; rpm source versions come from the source rpm's file name, without
  the epoch, as `parse_rpm_output` reports them) and each group's os-release file: the
  record itself is built by the plugin (`harness.agentreports.packages_state_frame`).
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

#: one installed package as the inventory plugin's sources report it
Item = dict[str, str]


@dataclass(frozen=True, slots=True)
class OsGroup:
    key: str
    os_id: str
    os_version: str  # VERSION_ID as os-release has it
    eco: str
    weight: int  # percent of the fleet
    base: int  # packages every host of the group has
    pretty: str = ""  # PRETTY_NAME, what the heartbeat's facts.os says

    def os_release(self) -> str:
        """The group's /etc/os-release (what the plugin reads ID and VERSION_ID from)."""
        return f'PRETTY_NAME="{self.pretty}"\nID={self.os_id}\nVERSION_ID="{self.os_version}"\n'


OS_GROUPS: tuple[OsGroup, ...] = (
    OsGroup("debian-12", "debian", "12", "deb", 35, 900, "Debian GNU/Linux 12 (bookworm)"),
    OsGroup("debian-11", "debian", "11", "deb", 15, 900, "Debian GNU/Linux 11 (bullseye)"),
    OsGroup("ubuntu-22.04", "ubuntu", "22.04", "deb", 25, 900, "Ubuntu 22.04.4 LTS"),
    OsGroup("rhel-9", "rhel", "9.3", "rpm", 15, 850, "Red Hat Enterprise Linux 9.3 (Plow)"),
    OsGroup("alpine-3.18", "alpine", "3.18.4", "apk", 10, 850, "Alpine Linux v3.18"),
)
#: Real packages with real version histories (newest first), per OS group: source ->
#: (binaries, versions). These are what the benchmark's queries ask about.
CORE: dict[str, dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "debian-12": {
        "openssl": (("openssl", "libssl3"), ("3.0.11-1~deb12u2", "3.0.11-1~deb12u1", "3.0.9-1")),
        "curl": (
            ("curl", "libcurl4", "libcurl3-gnutls"),
            ("7.88.1-10+deb12u5", "7.88.1-10+deb12u4", "7.88.1-10+deb12u1"),
        ),
        "glibc": (
            ("libc6", "libc-bin", "libc-l10n", "locales"),
            ("2.36-9+deb12u4", "2.36-9+deb12u3", "2.36-9+deb12u1"),
        ),
        "openssh": (
            ("openssh-client", "openssh-server", "openssh-sftp-server"),
            ("1:9.2p1-2+deb12u2", "1:9.2p1-2+deb12u1", "1:9.2p1-2"),
        ),
        "systemd": (
            ("systemd", "libsystemd0", "libudev1", "udev", "systemd-sysv"),
            ("252.22-1~deb12u1", "252.21-1~deb12u1", "252.19-1~deb12u1"),
        ),
        "sudo": (("sudo",), ("1.9.13p3-1+deb12u1", "1.9.13p3-1")),
        "zlib": (("zlib1g",), ("1:1.2.13.dfsg-1",)),
        "libxml2": (("libxml2",), ("2.9.14+dfsg-1.3~deb12u1", "2.9.14+dfsg-1.3")),
        "krb5": (
            ("libkrb5-3", "libgssapi-krb5-2", "libk5crypto3", "libkrb5support0"),
            ("1.20.1-2+deb12u1", "1.20.1-2"),
        ),
        "gnutls28": (("libgnutls30",), ("3.7.9-2+deb12u2", "3.7.9-2+deb12u1", "3.7.9-2")),
        "xz-utils": (("xz-utils", "liblzma5"), ("5.4.1-0.2",)),
        "tzdata": (("tzdata",), ("2024a-0+deb12u1", "2023c-5+deb12u1")),
    },
    "debian-11": {
        "openssl": (
            ("openssl", "libssl1.1"),
            ("1.1.1w-0+deb11u1", "1.1.1v-0~deb11u1", "1.1.1n-0+deb11u5"),
        ),
        "curl": (
            ("curl", "libcurl4", "libcurl3-gnutls"),
            ("7.74.0-1.3+deb11u11", "7.74.0-1.3+deb11u10", "7.74.0-1.3+deb11u7"),
        ),
        "glibc": (
            ("libc6", "libc-bin", "libc-l10n", "locales"),
            ("2.31-13+deb11u8", "2.31-13+deb11u7", "2.31-13+deb11u6"),
        ),
        "openssh": (
            ("openssh-client", "openssh-server", "openssh-sftp-server"),
            ("1:8.4p1-5+deb11u3", "1:8.4p1-5+deb11u2", "1:8.4p1-5+deb11u1"),
        ),
        "systemd": (
            ("systemd", "libsystemd0", "libudev1", "udev", "systemd-sysv"),
            ("247.3-7+deb11u4", "247.3-7+deb11u2", "247.3-7+deb11u1"),
        ),
        "sudo": (("sudo",), ("1.9.5p2-3+deb11u1", "1.9.5p2-3")),
        "zlib": (("zlib1g",), ("1:1.2.11.dfsg-2+deb11u2", "1:1.2.11.dfsg-2+deb11u1")),
        "libxml2": (("libxml2",), ("2.9.10+dfsg-6.7+deb11u4", "2.9.10+dfsg-6.7+deb11u3")),
        "krb5": (
            ("libkrb5-3", "libgssapi-krb5-2", "libk5crypto3", "libkrb5support0"),
            ("1.18.3-6+deb11u4", "1.18.3-6+deb11u3"),
        ),
        "gnutls28": (("libgnutls30",), ("3.7.1-5+deb11u4", "3.7.1-5+deb11u3")),
        "xz-utils": (("xz-utils", "liblzma5"), ("5.2.5-2.1~deb11u1",)),
        "tzdata": (("tzdata",), ("2024a-0+deb11u1", "2021a-1+deb11u11")),
    },
    "ubuntu-22.04": {
        "openssl": (
            ("openssl", "libssl3"),
            ("3.0.2-0ubuntu1.15", "3.0.2-0ubuntu1.14", "3.0.2-0ubuntu1.12"),
        ),
        "curl": (
            ("curl", "libcurl4", "libcurl3-gnutls"),
            ("7.81.0-1ubuntu1.15", "7.81.0-1ubuntu1.14", "7.81.0-1ubuntu1.13"),
        ),
        "glibc": (
            ("libc6", "libc-bin", "locales"),
            ("2.35-0ubuntu3.6", "2.35-0ubuntu3.5", "2.35-0ubuntu3.4"),
        ),
        "openssh": (
            ("openssh-client", "openssh-server", "openssh-sftp-server"),
            ("1:8.9p1-3ubuntu0.6", "1:8.9p1-3ubuntu0.4", "1:8.9p1-3ubuntu0.3"),
        ),
        "systemd": (
            ("systemd", "libsystemd0", "libudev1", "udev", "systemd-sysv"),
            ("249.11-0ubuntu3.12", "249.11-0ubuntu3.11", "249.11-0ubuntu3.10"),
        ),
        "sudo": (("sudo",), ("1.9.9-1ubuntu2.4", "1.9.9-1ubuntu2.3")),
        "zlib": (("zlib1g",), ("1:1.2.11.dfsg-2ubuntu9.2", "1:1.2.11.dfsg-2ubuntu9")),
        "libxml2": (("libxml2",), ("2.9.13+dfsg-1ubuntu0.3", "2.9.13+dfsg-1ubuntu0.2")),
        "krb5": (
            ("libkrb5-3", "libgssapi-krb5-2", "libk5crypto3", "libkrb5support0"),
            ("1.19.2-2ubuntu0.3", "1.19.2-2ubuntu0.2"),
        ),
        "gnutls28": (("libgnutls30",), ("3.7.3-4ubuntu1.4", "3.7.3-4ubuntu1.3")),
        "xz-utils": (("xz-utils", "liblzma5"), ("5.2.5-2ubuntu1",)),
        "tzdata": (("tzdata",), ("2024a-0ubuntu0.22.04", "2023c-0ubuntu0.22.04.2")),
    },
    "rhel-9": {
        "openssl": (
            ("openssl", "openssl-libs"),
            ("1:3.0.7-27.el9", "1:3.0.7-25.el9_3", "1:3.0.7-24.el9"),
        ),
        "curl": (("curl", "libcurl"), ("7.76.1-26.el9_3.3", "7.76.1-26.el9_3.2", "7.76.1-23.el9")),
        "glibc": (
            ("glibc", "glibc-common", "glibc-minimal-langpack", "glibc-langpack-en"),
            ("2.34-83.el9_3.12", "2.34-83.el9_3.7", "2.34-83.el9.7"),
        ),
        "openssh": (
            ("openssh", "openssh-clients", "openssh-server"),
            ("8.7p1-34.el9_3.3", "8.7p1-34.el9", "8.7p1-30.el9_2"),
        ),
        "systemd": (
            ("systemd", "systemd-libs", "systemd-pam", "systemd-udev"),
            ("252-18.el9", "252-14.el9_2.3"),
        ),
        "sudo": (("sudo",), ("1.9.5p2-10.el9_3", "1.9.5p2-9.el9")),
        "zlib": (("zlib",), ("1.2.11-40.el9", "1.2.11-39.el9")),
        "libxml2": (("libxml2",), ("2.9.13-5.el9_3", "2.9.13-3.el9_2.1")),
        "krb5": (("krb5-libs",), ("1.21.1-1.el9", "1.20.1-9.el9_2")),
        "gnutls": (("gnutls",), ("3.7.6-23.el9_3.3", "3.7.6-23.el9")),
        "xz": (("xz", "xz-libs"), ("5.2.5-8.el9_0",)),
        "tzdata": (("tzdata",), ("2024a-1.el9", "2023c-1.el9")),
    },
    "alpine-3.18": {
        "openssl": (("openssl", "libssl3", "libcrypto3"), ("3.1.4-r5", "3.1.4-r1", "3.1.3-r0")),
        "curl": (("curl", "libcurl"), ("8.5.0-r0", "8.4.0-r0", "8.3.0-r0")),
        "musl": (("musl", "musl-utils"), ("1.2.4-r2", "1.2.4-r1")),
        "openssh": (
            ("openssh", "openssh-client-default", "openssh-server"),
            ("9.3_p2-r1", "9.3_p2-r0", "9.3_p1-r3"),
        ),
        "busybox": (("busybox", "busybox-binsh", "ssl_client"), ("1.36.1-r5", "1.36.1-r2")),
        "sudo": (("sudo",), ("1.9.13_p3-r2", "1.9.13_p3-r0")),
        "zlib": (("zlib",), ("1.2.13-r1",)),
        "libxml2": (("libxml2",), ("2.11.6-r0", "2.11.4-r0")),
        "krb5": (("krb5-libs",), ("1.20.2-r0",)),
        "gnutls": (("gnutls",), ("3.8.0-r2", "3.8.0-r0")),
        "xz": (("xz", "xz-libs"), ("5.4.3-r0",)),
        "tzdata": (("tzdata",), ("2024a-r0", "2023c-r1")),
    },
}

#: Real project names; filler packages are built from them in each distribution's style.
_STEM_TEXT = (
    "acl attr audit avahi brotli bzip2 cairo cups cyrus-sasl dbus e2fsprogs elfutils expat file "
    "flac fontconfig freetype fribidi gdbm gdk-pixbuf gettext glib gmp gpgme graphite2 gtk "
    "harfbuzz icu jansson jbigkit json-c keyutils kmod lcms2 archive assuan bsd cap-ng edit "
    "event ffi gcrypt gpg-error idn2 ksba mnl nl3 psl seccomp selinux sepol ssh tasn1 tirpc "
    "unistring usb uv verto webp x11 xau xcb xdmcp xext xrender yaml lz4 lzo mpfr ncurses "
    "nettle newt nghttp2 npth numactl oniguruma openldap opus p11-kit pango pcre2 pixman popt "
    "protobuf readline slang snappy speex sqlite tcl tk wayland xxhash zstd apr aspell atk "
    "augeas babeltrace bind boost c-ares ceph check chrony cjson cmocka colord coreutils cpio "
    "cracklib cronie dav1d db dconf diffutils dmidecode dnsmasq dosfstools dracut ebtables "
    "ethtool fftw findutils fuse gawk gc gd ghostscript giflib git gnupg gperftools grep groff "
    "grub gsm gzip hdparm hwdata hunspell iproute iptables iputils jasper jq json-glib kbd less "
    "libaio libarchive libcbor libdrm libepoxy libfido2 libgudev libinput libjpeg libmaxminddb "
    "libnftnl libpcap libpng libsodium libssh2 libtool libuser libwacom libxkbcommon libxslt "
    "lmdb logrotate lsof lua lvm2 m4 make man-db mariadb mdadm memcached mesa mpc nano nfs-utils "
    "nftables nspr nss ntfs-3g oath-toolkit openjpeg openldap orc parted patch pciutils perl "
    "pigz pinentry pkgconf polkit postfix procps psmisc pulseaudio python3 qrencode rdma-core "
    "redis rpcbind rsync rsyslog ruby samba sed setools shadow slirp4netns socat sound-theme "
    "squashfs strace sysstat tar tcpdump texinfo time tpm2-tss tree unbound unzip usbutils "
    "util-linux vim wget which whois xfsprogs xmlsec1 xorg zip"
)
STEMS: tuple[str, ...] = tuple(_STEM_TEXT.split())


def _seed(*parts: object) -> int:
    """A stable seed (str hashes are salted per process; this is not)."""
    return zlib.crc32("\0".join(map(str, parts)).encode())


def _filler_binaries(eco: str, stem: str, rnd: random.Random) -> list[str]:
    """A source package's binaries, named as the distribution names them."""
    bare = stem[3:] if stem.startswith("lib") and len(stem) > 5 else stem
    so = rnd.choice(["0", "1", "2", "3", "6", "-1.0-0", "1.0", "8"])
    if eco == "deb":
        pats = [
            f"lib{bare}{so}",
            f"lib{bare}-dev",
            stem,
            f"{stem}-common",
            f"{stem}-data",
            f"python3-{bare}",
            f"lib{bare}-perl",
            f"gir1.2-{bare}-1.0",
            f"{stem}-doc",
            f"ruby-{bare}",
            f"node-{bare}",
            f"golang-{bare}-dev",
            f"lib{bare}-utils",
        ]
    elif eco == "rpm":
        pats = [
            stem,
            f"{stem}-libs",
            f"{stem}-devel",
            f"{stem}-common",
            f"python3-{bare}",
            f"perl-{bare.capitalize()}",
            f"{stem}-doc",
            f"{stem}-tools",
            f"{stem}-data",
            f"rubygem-{bare}",
            f"golang-{bare}",
            f"{stem}-utils",
            f"lib{bare}",
        ]
    else:
        pats = [
            stem,
            f"{stem}-libs",
            f"{stem}-dev",
            f"{stem}-doc",
            f"py3-{bare}",
            f"perl-{bare}",
            f"lib{bare}",
            f"{stem}-openrc",
            f"{stem}-utils",
            f"{stem}-static",
            f"ruby-{bare}",
            f"{stem}-lang",
            f"{stem}-data",
        ]
    return pats


def _filler_versions(group: OsGroup, stem: str) -> tuple[str, ...]:
    """A source package's version history (newest first) in the group's style."""
    rnd = random.Random(_seed("ver", group.key, stem))
    major, minor, patch = rnd.randint(0, 12), rnd.randint(0, 40), rnd.randint(0, 20)
    if group.key == "debian-11":  # an older release: older upstream versions
        minor = max(0, minor - rnd.randint(1, 6))
    up = f"{major}.{minor}.{patch}"
    if rnd.random() < 0.1:
        up += "+dfsg" if group.eco == "deb" else ""
    epoch = rnd.choice(["1:", "2:"]) if rnd.random() < 0.06 else ""
    rev = rnd.randint(1, 9)
    n = 3 if rnd.random() < 0.35 else 2
    if group.key.startswith("debian"):
        rel = group.os_version
        if n == 3:
            return (*(f"{epoch}{up}-{rev}+deb{rel}u{u}" for u in (2, 1)), f"{epoch}{up}-{rev}")
        return (f"{epoch}{up}-{rev}", f"{epoch}{up}-{max(1, rev - 1)}~bpo{rel}+1")
    if group.key.startswith("ubuntu"):
        if n == 3:
            return (
                *(f"{epoch}{up}-{rev}ubuntu0.22.04.{u}" for u in (2, 1)),
                f"{epoch}{up}-{rev}build1",
            )
        return (f"{epoch}{up}-{rev}ubuntu{rnd.randint(1, 5)}", f"{epoch}{up}-{rev}")
    if group.eco == "rpm":
        r = rnd.randint(2, 40)
        if n == 3:
            return (f"{epoch}{up}-{r}.el9_3.1", f"{epoch}{up}-{r}.el9", f"{epoch}{up}-{r - 1}.el9")
        return (f"{epoch}{up}-{r}.el9", f"{epoch}{up}-{r - 1}.el9")
    r = rnd.randint(1, 6)
    return tuple(f"{up}-r{x}" for x in range(r, max(-1, r - n), -1))


@dataclass(slots=True)
class Source:
    name: str
    binaries: tuple[str, ...]
    versions: tuple[str, ...]  # newest first
    core: bool


@dataclass(slots=True)
class GroupCatalog:
    """One OS group's package universe, its base set, and rows pre-built per version."""

    group: OsGroup
    sources: list[Source]
    base: list[tuple[int, str]]  # (source index, binary) every host has
    extras: list[tuple[int, str]]  # what hosts pick their other packages from
    #: (source index, binary, version index) -> the package item
    items: dict[tuple[int, str, int], Item]

    def item(self, src: int, binary: str, vi: int) -> Item:
        return self.items[(src, binary, vi)]


def _arch(eco: str, binary: str) -> str:
    if binary.endswith(("-doc", "-data", "-common")) or binary.startswith(("python3-", "perl-")):
        return "all" if eco == "deb" else "noarch"
    return {"deb": "amd64", "rpm": "x86_64", "apk": "x86_64"}[eco]


def _rpm_source_version(version: str) -> str:
    """What `parse_rpm_output` reports: the source rpm's file name has no epoch."""
    return version.split(":", 1)[1] if ":" in version else version


def build_catalog(group: OsGroup) -> GroupCatalog:
    rnd = random.Random(_seed("catalog", group.key))
    sources: list[Source] = [
        Source(name, bins, vers, True) for name, (bins, vers) in CORE[group.key].items()
    ]
    taken = {b for s in sources for b in s.binaries}
    for stem in dict.fromkeys(STEMS):
        bins = _filler_binaries(group.eco, stem, random.Random(_seed("bins", group.eco, stem)))
        fresh = tuple(b for b in dict.fromkeys(bins) if b not in taken)  # one name, one source
        taken.update(fresh)
        if fresh:
            sources.append(Source(stem, fresh, _filler_versions(group, stem), False))
    pairs = [(i, b) for i, s in enumerate(sources) for b in s.binaries]
    core = [p for p in pairs if sources[p[0]].core]
    rest = [p for p in pairs if not sources[p[0]].core]
    rnd.shuffle(rest)
    base = core + rest[: group.base - len(core)]
    extras = rest[group.base - len(core) :]
    items: dict[tuple[int, str, int], Item] = {}
    for i, s in enumerate(sources):
        for b in s.binaries:
            for vi, v in enumerate(s.versions):
                src_v = _rpm_source_version(v) if group.eco == "rpm" else v
                items[(i, b, vi)] = {"ecosystem": group.eco, "name": b, "version": v,
                                     "architecture": _arch(group.eco, b), "source": s.name,
                                     "source_version": src_v}  # fmt: skip
    return GroupCatalog(group, sources, base, extras, items)


@dataclass(frozen=True, slots=True)
class HostInventory:
    host: str
    group: OsGroup
    packages: list[Item]
    lagging_sources: int


class Fleet:
    """Every host's OS group and package set, from `seed` and the host's index."""

    def __init__(self, seed: int = 7) -> None:
        self.seed = seed
        self.catalogs = {g.key: build_catalog(g) for g in OS_GROUPS}
        self._weights = [g.weight for g in OS_GROUPS]

    def group_of(self, index: int) -> OsGroup:
        return random.Random(_seed(self.seed, "os", index)).choices(OS_GROUPS, self._weights)[0]

    def inventory(self, index: int, host: str) -> HostInventory:
        group = self.group_of(index)
        cat = self.catalogs[group.key]
        rnd = random.Random(_seed(self.seed, "host", index))
        total = rnd.randint(1000, 1500)
        chosen = cat.base + rnd.sample(cat.extras, min(len(cat.extras), total - len(cat.base)))
        x = rnd.random()
        n_lag = 0 if x < 0.65 else rnd.randint(1, 8) if x < 0.93 else rnd.randint(40, 150)
        srcs = sorted({s for s, _ in chosen})
        lag: dict[int, int] = {}
        for s in rnd.sample(srcs, min(n_lag, len(srcs))):
            hist = len(cat.sources[s].versions)
            if hist > 1:
                lag[s] = min(hist - 1, 1 if rnd.random() < 0.7 else rnd.randint(2, 3))
        items = [cat.item(s, b, lag.get(s, 0)) for s, b in chosen]
        return HostInventory(host, group, items, len(lag))
