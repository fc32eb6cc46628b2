"""A training corpus of 83 real photographs taken from Debian packages: get, check, prepare, describe.

The embedded photos (kd_tf.images) are a dozen small images; a denoiser trained on them sees little
texture. These 83 photographs (about 400 MP at the source) come from wallpaper and test-data
packages of Debian 12 (bookworm), so anyone with apt gets exactly the same bytes: every source file
is pinned by its SHA-256. `fetch` downloads each package with `apt-get download` (nothing is
installed), extracts the listed files, checks their hashes, and writes each photo as an 8-bit RGB
PNG plus `manifest.json`. JPEGs below quality 90 are halved (area averaging) first, so that their
block artefacts shrink below what the denoiser learns as "clean".

HELDOUT2 names a second held-out set, kept out of training; `load_corpus(role=...)` returns either part.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np
from kd_tf.errors import InputError

log = logging.getLogger(__name__)

FETCH_COMMAND = "python -m kd_tf photos fetch"
MANIFEST = "manifest.json"
FETCH_REPORT = "fetch_report.json"
MANIFEST_FORMAT = "kd_tf photo corpus 1"
ROLES = ("train", "heldout2")
DOWNSCALE_BELOW_QUALITY = 90     # JPEG quality under which block artefacts are visible at 100%


@dataclasses.dataclass(frozen=True)
class Photo:
    """One photograph: where it is in its package, its pinned hash, its licence and what it shows."""

    package: str
    path: str            # inside the package (no leading slash); for .edj the Eet file
    sha256: str          # of the source file; for .edj of the JPEG entry's bytes
    licence: str
    kind: str            # texture, colour, flower, plant, animal, people, object, indoor, landscape, sky
    stem: str            # the output name is <package>__<stem>.png
    entry: str | None = None     # .edj only: the Eet entry holding the largest JPEG (3840x2160)

    @property
    def name(self) -> str:
        return f"{self.package}__{self.stem}"

    @property
    def source(self) -> str:
        return f"/{self.path}" + (f"#{self.entry}" if self.entry else "")


def _package(package: str, folder: str, licence: str, rows, entry: str | None = None,
             stem_from_folder: bool = False) -> tuple[Photo, ...]:
    """Table rows (file, kind, sha256[, licence]) of one package folder as Photos."""
    photos = []
    for file, kind, sha256, *own_licence in rows:
        stem = file.split("/")[0] if stem_from_folder else Path(file).stem
        photos.append(Photo(package, f"{folder}/{file}", sha256, own_licence[0] if own_licence else licence,
                            kind, stem, entry))
    return tuple(photos)


# Photographs only: the same packages hold renders, logos and re-encodings, which are left out
# (see /work/shared/DATA_SOURCES.md). Hashes computed from the bookworm packages named in PACKAGES.
PHOTOS: tuple[Photo, ...] = (
    *_package("enlightenment-data", "usr/share/enlightenment/data/backgrounds", "BSD-2-clause", entry="edje/images/0",
              rows=(  # left out: Dunes, Flat-Fan, Sunset-Hills, Squiggle* (renders)
                  ("Bamboo.edj", "plant", "d8d003f6ebb4437bac4a579eadef7fdf4aae0144e443edd444c8af61bff17809"),
                  ("Foggy-Trees.edj", "landscape", "6a1934df4d3d0d4cfc654bb125a9322b49188dabc519dd918a9fa71ef5c6ee0c"),
                  ("God-Rays.edj", "sky", "cb871506ee3d339d26bf382c5c9e98f1fa749bd99d7e5b6cb3a4cb849d50354d"),
                  ("Green-Maple.edj", "plant", "4db2abb44fb3dec55f18fc4e4eb0f72e4af9fe7af9cce1d5573f926e49811b0e"),
                  ("Lichen-Branches.edj", "texture",
                   "08c9e543b99ec73ff73203bcfc5b8c3f9f0ec9c3aa2e8e94fdb2a640e5f6179a"),
                  ("Mountain.edj", "landscape", "dcbef7e92cc196474f3b4eabf80b45a4dab0bdf8066deaf9ef565048bb72f8bb"),
                  ("Peaks.edj", "landscape", "4fea206973cdc79c91fa8045eb9201696f91f627c1b6760da0bed766e0a85549"),
                  ("Red-Maple.edj", "colour", "bb6097ffef927fb219f7225da09df55ce2110a8c2b636d6e387802b9c1bf567e"),
                  ("Sea-of-Lanterns.edj", "colour",
                   "e1a4db127d62346f2e7930abb5770caebe7ce6257afa7bc842a1e79a8dac4fe4"),
                  ("Snow-Trees.edj", "landscape", "3671426df1713ecd0165679ca5023eb5ad631d0c5a1b58386722cb020dc6f3cb"),
                  ("Spruce-Needles.edj", "plant", "fa3f06176b8c1ffc57964912c1faf512c845278f6d95addf6e4f0f56ef643d7e"),
                  ("Sunset-Clouds.edj", "sky", "c99581ba894a81cc0169cc2b2656f80d0f7884787368ff21a15ac539af0ffd08"),
                  ("White-Flower.edj", "flower", "a55797bf0a107c1f64725ec3a6d5cefcd617730831ec230bf16398e0a7100c46"),
                  ("Yellow-Flower.edj", "flower", "00b486e183927954465f42122b9462bcfebc0474d10ab790323d0e1cfe10fd9c"),
                  ("Flat-Stone-Pattern.edj", "texture",
                   "e04930f426e8e6ea3263fdf5072e0e7d069a140c84c775c0585468d55647f295"),
                  ("Paper-Flower.edj", "texture", "80bb873b649ef79f4569326a7be9cbc20246de422325dc6b2ee58bcc9a971975"),
              )),
    *_package("lomiri-wallpapers-16.04", "usr/share/backgrounds", "CC-BY-4.0",
              rows=(  # left out: umang_by_Abhishek_Mudgal (abstract)
                  ("Bridge_by_Sander_Klootwijk.jpg", "sky",
                   "bd86b081f9975e2b83527f71e49b9271a8ab40885428395969d9f7d834d7f050", "CC-BY-SA-4.0"),
                  ("Dragonfly_by_Bolly.jpg", "plant",
                   "af5af17841009732def24b09bb1e669a1b09d2b4bdeee7812c371101c30d2bb3", "CC-BY-SA-4.0"),
                  ("Picture_0B_by_freespace.jpg", "object",
                   "c8c0ab18e48d9e0419fe42881112137f3afafc27dfddc29ec3a6d54c56d225ad"),
                  ("Picture_1A_by_freespace.jpg", "colour",
                   "89e86af38d04daaef975665dc2127e9fa76f0fd68f4eea105a2d0ae3390b010b"),
                  ("Wine_by_Jakkub_Mede.jpg", "indoor",
                   "d2e96e6d4da40dd804b3d0ce295e94de04a2d7d9b6785d42cd9d92ba58bced74"),
                  ("aitzgorri_by_Aitzol_Berasategi.jpg", "landscape",
                   "66268e7b48f8854d36a28765fac6e23ec1aee251daa6da1f64715f201020ad36"),
                  ("analogpattern_by_Peter_Nerlich.jpg", "texture",
                   "15372488a192b2be2eafc67bd3ed31cbfca19abe3929e925607fcbc9cb4d4202", "CC-BY-SA-4.0"),
                  ("free_by_Peter_Nerlich.jpg", "object",
                   "85a5453c2fed514c75973016f3d862aca62eb7ca087618822469274ac1092373", "CC-BY-SA-4.0"),
                  ("friends_by_Aitzol_Berasategi.jpg", "animal",
                   "cc40e313c74e421edffe3403def413c16878ce14661cce7ec5915baeab35538d"),
                  ("greentock_by_Peter_Nerlich.jpg", "object",
                   "e7b20e2db9dcd6e2b278ca55873c2110b35d89cd38b04d0b18728726888e6889", "CC-BY-SA-4.0"),
                  ("life_by_Aitzol_Berasategi.jpg", "landscape",
                   "4c119350ead80201fe256850c3d316309ddfb4bdf10b235ce982dcde0c667c05"),
                  ("picosdeeuropa_by_Aitzol_Berasategi.jpg", "landscape",
                   "414d0072b2f6f2c555deafeaef6e45c4fed6fa9ad26eba6560ca8803959cf97a"),
                  ("seeding_by_Clements_Engelhardt.jpg", "plant",
                   "a5634d1ab5e41a3568e92d4a894a500c92b891f9ff734e50bd224d6e185a605f", "CC0-1.0"),
                  ("sunset_by_Aitzol_Berasategi.jpg", "landscape",
                   "474dab6a4b9f94dc76c29dfe30e9f5db4af0fd2e33fe5d695f8152b371efca18"),
              )),
    *_package("lomiri-wallpapers-20.04", "usr/share/backgrounds", "CC-BY-SA-3.0",
              rows=(  # left out: Fossa, Infinite-Sea, Painting-Colors (renders)
                  ("Kleiber_by_Lukas_Baubkus.jpg", "texture",
                   "6572410c09f4492c74ccadde133565a14c0161617d5917d4c820c66d65a44ba7"),
              )),
    *_package("plasma-workspace-wallpapers", "usr/share/wallpapers", "GPL-2+", stem_from_folder=True,
              rows=(  # left out: the other 19 wallpapers (renders)
                  ("BytheWater/contents/images/2560x1600.jpg", "object",
                   "c272434ef39f2abf1ed48a15a8910088020f3165329a5092f3940ec9464bc05f"),
                  ("ColdRipple/contents/images/2560x1600.jpg", "landscape",
                   "05bef6722fc0ed81292cceb3ed026c38d17e510f3c84be7d68610c2b1a723c3f"),
                  ("ColorfulCups/contents/images/2560x1600.jpg", "colour",
                   "6e0f3a72feb5a4a9fec191b77e34874c3c69e2d93040deb3f07773e73385023d"),
                  ("DarkestHour/contents/images/2560x1600.jpg", "landscape",
                   "8e3703fae3a3c217b1fc2b399b706cd3720584268d071ba153e4809daa55f1ce"),
                  ("EveningGlow/contents/images/2560x1600.jpg", "landscape",
                   "586682dcb362b9f620068f10138f87d0d3649939aef238adc5807cb951976a7a"),
                  ("FallenLeaf/contents/images/2560x1600.jpg", "plant",
                   "95603a6560c7e8d50e0e03b3f4adbe39c5258c72528e74e4ecaea1daf4e499de"),
                  ("Grey/contents/images/2560x1600.jpg", "texture",       # a gray-scale JPEG
                   "88c31d8944b7e6935d1b9a296654c692f0772cb512491713eb30a972a604c0ed"),
                  ("Kite/contents/images/2560x1600.jpg", "sky",
                   "bdca288ce296a981e80659c021cf707caddc702c0c8d4247e60bd618476d47f8"),
                  ("OneStandsOut/contents/images/2560x1600.jpg", "texture",
                   "cb507baf1dafdcae362264f3aba9483ed4be5f6c9fdd770f0ec0920c6d9e80fd"),
                  ("Path/contents/images/2560x1600.jpg", "landscape",
                   "7477457d7f17b736259f1b021864778ad4ba802cf3214e6728181ff29126bba8"),
                  ("summer_1am/contents/images/2560x1600.jpg", "sky",
                   "c868b50789591dd42910153c768053f1ba0a98cb36bbfc2b7a96a1045d0477f8"),
              )),
    # debian/copyright says LGPL-2.1+ for these; the package's wallpapers/License file says CC-BY-SA-3.0
    *_package("lxqt-themes", "usr/share/lxqt/wallpapers", "LGPL-2.1+",
              rows=(  # left out: logos, origami, triangles, waves, plasma_arch (renders)
                  ("Butterfly-Kenneth-Wimer.jpg", "animal",
                   "c237c26f6f0b18db3afa62a0eff13cb8208b79a1ef35aaadcb745d8f9faef146"),
                  ("Valendas.png", "landscape", "f2d275c51d116942cea8e7d80d30c7d3c130349a0695caf2aa235f926ae15759"),
                  ("after-the-rain.jpg", "sky", "e6cb8b3e09b904cc493ff17fddcd564d4e46a1761d05adf972c285a1fd878234"),
                  ("appleflower.png", "flower", "bae8a8eb8274b29509f1cbbfe250081331c5704a1fea25d5052166a0451e67f3"),
                  ("beam.png", "sky", "3d199194b048cb793c0ad558337cda3e16f14cd054168d1d813620e24a0a5659"),
                  ("butterfly.png", "animal", "13175434d99075e075de7321942e66169e3c99ac9416024dcf4123bd3b38749c"),
                  ("cloud.png", "sky", "522dbf79dfaff751cf8ef2f337c9d196a231fa096bc38806a76ce048b8c7b5a2"),
                  ("drop.png", "plant", "3b726aea9a6f8af36431c6f1974f982f7f4c5a4443499500bda31be27e4ffde8"),
                  ("flowers.png", "flower", "3a935d8be4d6c9784f9079ff2814acd2de2c8406e9fe584be03e90264f37c371"),
                  ("fog.jpg", "landscape", "a8235344ee6b5ab1b6de3ccef731bcc0e6509cf33ce832db87eae1eb75987083"),
                  ("this-is-not-windows.jpg", "landscape",
                   "2d885e0438c0ab244f818d33d8f745a1cc486558462faf9bf3948675c68ac227"),
              )),
    *_package("mate-backgrounds", "usr/share/backgrounds/mate/nature", "GPL-2+",
              rows=(  # left out: abstract/ and desktop/ (renders)
                  ("Aqua.jpg", "object", "5c30118205982da441bf7e6a1ada636a8a0be879408140b3148280c665ed6bce"),
                  ("Blinds.jpg", "plant", "f7aac0dcc2e06d0491643e84df3da1d9db7c4610f58806a880d56e074799f600"),
                  ("Dune.jpg", "landscape", "8a67c2cb0be8c46b70c237311a4fa4d2b4ac7d39568135384787801fa5cc9a91"),
                  ("FreshFlower.jpg", "flower", "972b0a0c4e5e3fa93f4f244fc84bc64b121a5eac3aaa5856f1308c1f38a02f8e"),
                  ("Garden.jpg", "flower", "d3095ee09d425ef23d27155412136cf14fc3c9af76ca58b452f55e23da324e78"),
                  ("GreenMeadow.jpg", "plant", "8fa0de0aa4089f7319c9fb7a6d006d4cab6023e8c8853731557cff53567b4832"),
                  ("LadyBird.jpg", "animal", "e35a9a4126ef969c90b29c038058c5a575a20eadd84106a37bf1fa9931e7b61d"),
                  ("RainDrops.jpg", "plant", "3e4ea9671c28c90a86cf67b3db9daf18c4741587c596333a7529ca589aaa0c16"),
                  ("Storm.jpg", "sky", "77ca53077831d3237f73393a91fc879158abc046d852941c26e90de336356957"),
                  ("TwoWings.jpg", "flower", "665e5abf8a5399070a91a9a8e455fe071e5b61697ff78fdeda4e9843ef545aeb"),
                  ("Wood.jpg", "texture", "19c78500ac00a622e19907ab9cc7d06d46fe08c4a6142759a84195696150ec07"),
                  ("YellowFlower.jpg", "flower", "254da96256acb7add685679775a04d1e4a5bc8cd13e5a5a3d61351ce198a5306"),
              )),
    *_package("libelementary-data", "usr/share/elementary/images", "BSD-2-clause",
              rows=(  # left out: icons, logos, pol_* (cut-outs), space.png, earth_normal.png
                  ("insanely_huge_test_image.jpg", "people",
                   "0e962855a532467699763e5cedceda10419b24d5739930cf6bc08869d6559731"),
                  ("mystrale.jpg", "animal", "445e6f135a1644ccff2d25dc21379707ddebb3194b4be8bcd25363fa2be76cf6"),
                  ("mystrale_2.jpg", "animal", "17ae38909c5098d0757fbfb34ec40642f62c3208c37a8983457c8dd9e48e1a86"),
                  ("twofish.jpg", "people", "abcc4525665b17c82e37897660f19814c0f1c156387dab4fd6e150517b2f0e9e"),
                  ("rock_01.jpg", "texture", "963f021c0a94571f3aaca7ad88782b887942b5e9c09d95eacc379761ca697b7a"),
                  ("rock_02.jpg", "texture", "3ff30f6fdad4d91077f568aa634d40b240b31259d3e2152e38ab614f173f5924"),
                  ("plant_01.jpg", "plant", "a72f4a4f1d3b4b5ce607b20686553157169ec156d7cb5b486057f568c5c6645a"),
                  ("wood_01.jpg", "texture", "c6b77e64bdff9fd52b717b5ace2b3c4fe73ebff1e1f4316be8ff311178e54f08"),
                  ("sky_01.jpg", "sky", "5c77786db4f008d790d89140b2404bcdc067cd0072f97a18938fc1a178b51f93"),
                  ("sky_02.jpg", "sky", "5bd9f32a8dfe5048045eab7473f10508432f7ebf347dee1afa5e56795f3610f9"),
                  ("sky_03.jpg", "sky", "9a6f4a1c6dc569d135813e6063469980355568efb843fd19f1541f6f01baaabb"),
                  ("sky_04.jpg", "sky", "ab989f8e040d4745320f60b82e70de09fa0ad36249969bcc3d77c2df4123d9c1"),
                  ("panel_01.jpg", "texture", "7f165ca3e4fb83ad4a173d4f483361d8c52426cb88dad8953faa230587fa7c99"),
              )),
    *_package("libjxl-testdata", "usr/share/libjxl-testdata", "BSD-3-clause",
              rows=(  # left out: re-encodings of these and synthetic test images
                  ("jxl/flower/flower.png", "flower",
                   "06fe0af7a5c790d2932a40e2d76b0d91aa6e73f3e55cc3f97ea6afae0133c2e7"),
                  # 16-bit BT.2020 HLG signal, used as is (HLG is SDR-compatible; colours slightly muted)
                  ("jxl/hdr_room.png", "indoor", "df2efb86c6114dba264c849ac0ae3a073c663d5aa55890fa276b8bd3b0efb2ae"),
                  ("external/wesaturate/500px/cvo9xd_keong_macan_srgb8.png", "landscape",
                   "f4e2d8da468a4f6bfd3a651a7f0a24c2b883e7f398b326c0e77a9dab42fb5322", "CC0-1.0"),
                  ("external/wesaturate/500px/tmshre_riaphotographs_srgb8.png", "flower",
                   "b490de2143a336aff26a7ce4ee010f18dece53c3b0802cda76c1796daa5f32a0", "CC0-1.0"),
                  ("external/wesaturate/500px/u76c0g_bliznaca_srgb8.png", "flower",
                   "9631423e430c1682fca3c2212adc6ae046df8839d22dfaa8b662761f34b6f711", "CC0-1.0"),
              )),
)

# The Debian 12 (bookworm) versions whose files the hashes above were computed from.
PACKAGES = {
    "enlightenment-data": "0.25.4-2",
    "lomiri-wallpapers-16.04": "20.04.0-2",
    "lomiri-wallpapers-20.04": "20.04.0-2",
    "plasma-workspace-wallpapers": "4:5.27.5-2",
    "lxqt-themes": "1.2.0-1",
    "mate-backgrounds": "1.26.0-1",
    "libelementary-data": "1.26.3-1",
    "libjxl-testdata": "0.0~git20230110.d6168ff-1",
}

# Halved whatever their JPEG quality says, with the reason recorded in the manifest.
ALWAYS_HALVE = {"enlightenment-data__Sea-of-Lanterns": "sensor noise visible at full size"}

# The second held-out set: never trained on. One or two per kind of content a denoiser can fail on
# (fine texture, saturated colour, faces, an animal with fur, objects, landscape with smooth sky), all
# from sources at JPEG quality >= 90 or lossless PNG, so the clean reference carries no visible
# compression artefacts. Three of the 16 enlightenment photos (the best sources) are held out; the
# small 640x640 textures and the 500x500 libjxl crops are left to training, where their size matters less.
HELDOUT2 = (
    "enlightenment-data__Lichen-Branches",              # fine texture: lichen threads, bokeh (q99, 8.3 MP)
    "enlightenment-data__Red-Maple",                    # saturated red leaves on dark (q99)
    "enlightenment-data__Snow-Trees",                   # landscape: snow, thin branches, shadows (q99)
    "libjxl-testdata__flower",                          # lossless camera photo: petals, pink and violet
    "libelementary-data__insanely_huge_test_image",     # two faces, indoor light (q90, 8 MP)
    "libelementary-data__mystrale_2",                   # a dog in grass: fur and grass blades (q97)
    "lomiri-wallpapers-16.04__Picture_1A_by_freespace",  # objects: paint brushes, saturated colours (q99)
    "lomiri-wallpapers-16.04__greentock_by_Peter_Nerlich",  # object: a clock face, smooth gradients (q95)
    "mate-backgrounds__RainDrops",                      # leaves with water drops: edges, highlights (q100)
    "lxqt-themes__this-is-not-windows",                 # landscape: hills, blue sky, clouds (q95)
)


def default_corpus_dir() -> Path:
    """$KD_TF_PHOTOS if set, else ~/.cache/kd_tf/photos: outside the repository (hundreds of MB)."""
    configured = os.environ.get("KD_TF_PHOTOS")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "kd_tf" / "photos"


# ---------------------------------------------------------------------------------------------
# Eet (.edj) files and JPEG quantisation tables

EET_MAGIC = 0x1EE70F42      # Eet file format 2: header, directory entries, dictionary, data


def eet_entries(raw: bytes, where: str = "Eet file") -> dict[str, tuple[int, int, int]]:
    """{entry name: (offset, size, flags)} of an Eet file (Enlightenment's .edj), from its directory."""
    if len(raw) < 12:
        raise InputError(f"{where}: {len(raw)} bytes, too short for an Eet header (12 bytes)")
    magic, count, _dictionary_size = struct.unpack(">3i", raw[:12])
    if magic != EET_MAGIC:
        raise InputError(f"{where}: magic 0x{magic & 0xFFFFFFFF:08X}; expected 0x{EET_MAGIC:08X} (an Eet file)")
    if count < 0 or 12 + 24 * count > len(raw):
        raise InputError(f"{where}: directory of {count} entries does not fit in {len(raw)} bytes")
    entries = {}
    for index in range(count):
        offset, size, _data_size, name_offset, name_size, flags = struct.unpack(
            ">6i", raw[12 + 24 * index:36 + 24 * index])
        if min(offset, size, name_offset, name_size) < 0 or offset + size > len(raw) \
                or name_offset + name_size > len(raw):
            raise InputError(f"{where}: entry {index} points outside the file ({len(raw)} bytes)")
        name = raw[name_offset:name_offset + name_size].split(b"\0")[0].decode("utf-8", "replace")
        entries[name] = (offset, size, flags)
    return entries


def eet_jpeg(raw: bytes, entry: str, where: str = "Eet file") -> bytes:
    """The bytes of one stored (uncompressed) JPEG entry of an Eet file."""
    entries = eet_entries(raw, where)
    jpegs = [name for name, (offset, _, flags) in entries.items()
             if flags == 0 and raw[offset:offset + 3] == b"\xff\xd8\xff"]
    if entry not in jpegs:
        raise InputError(f"{where}: no stored JPEG entry {entry!r}; its JPEG entries: {sorted(jpegs) or 'none'}")
    offset, size, _ = entries[entry]
    return raw[offset:offset + size]


# The IJG (libjpeg) luminance table at quality 50, in natural (row-major) order; the file stores
# tables in zig-zag order.
_IJG_LUMINANCE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], np.int64)
_ZIGZAG = np.array([
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14,
    21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53,
    60, 61, 54, 47, 55, 62, 63])


def _ijg_table(quality: int) -> np.ndarray:
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return np.clip((_IJG_LUMINANCE * scale + 50) // 100, 1, 255)


_IJG_TABLES = np.stack([_ijg_table(quality) for quality in range(1, 101)])


def luminance_table(raw: bytes) -> np.ndarray | None:
    """The JPEG's quantisation table 0 (luminance) in natural order, or None if it has none."""
    position = 2
    while position + 4 <= len(raw) and raw[position] == 0xFF:
        marker = raw[position + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:    # no length field
            position += 2
            continue
        length = struct.unpack(">H", raw[position + 2:position + 4])[0]
        if marker == 0xDB:
            segment, cursor = raw[position + 4:position + 2 + length], 0
            while cursor < len(segment):
                precision, table_id = segment[cursor] >> 4, segment[cursor] & 15
                width = 128 if precision else 64
                values = segment[cursor + 1:cursor + 1 + width]
                if table_id == 0 and len(values) == width:
                    zigzag = np.frombuffer(values, ">u2" if precision else np.uint8).astype(np.int64)
                    table = np.empty(64, np.int64)
                    table[_ZIGZAG] = zigzag
                    return table
                cursor += 1 + width
        if marker == 0xDA:          # start of scan: the tables come before it
            return None
        position += 2 + length
    return None


def estimate_jpeg_quality(raw: bytes) -> int | None:
    """The IJG quality (1-100) whose scaled luminance table is closest to the file's; None if `raw`
    is not a JPEG. Encoders with their own tables (Photoshop, cameras) get the nearest IJG quality."""
    if raw[:2] != b"\xff\xd8":
        return None
    table = luminance_table(raw)
    if table is None:
        return None
    errors = np.abs(_IJG_TABLES - table).sum(axis=1)
    return int(np.argmin(errors)) + 1


def halve(image: np.ndarray) -> np.ndarray:
    """Half the size by averaging each 2x2 block (cv2.INTER_AREA); an odd last row/column is dropped."""
    height, width = image.shape[0] // 2, image.shape[1] // 2
    return cv2.resize(image[:2 * height, :2 * width], (width, height), interpolation=cv2.INTER_AREA)


# ---------------------------------------------------------------------------------------------
# Fetching

def _missing_tools(need_apt: bool) -> list[str]:
    tools = ("apt-get", "dpkg-deb") if need_apt else ("dpkg-deb",)
    return [tool for tool in tools if shutil.which(tool) is None]


def apt_download(package: str, directory: Path) -> Path:
    """`apt-get download PACKAGE` into `directory` (nothing is installed); the .deb's path."""
    result = subprocess.run(["apt-get", "download", package], cwd=directory, capture_output=True, text=True)
    debs = sorted(Path(directory).glob(f"{package}_*.deb"))
    if result.returncode != 0 or not debs:
        errors = [line for line in (result.stderr or "").splitlines() if line.startswith("E:")]
        reason = errors[-1] if errors else (result.stderr.strip().splitlines() or ["no .deb written"])[-1]
        raise InputError(f"apt-get download {package} failed ({reason}); if the package lists are missing or "
                         f"old, run `apt-get update` once (as root)")
    return debs[-1]


def _run(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise InputError(f"{' '.join(map(str, command))} failed: {result.stderr.strip() or result.returncode}")
    return result.stdout


def _select(packages: Iterable[str] | None, photos: tuple[Photo, ...]) -> list[str]:
    known = list(dict.fromkeys(photo.package for photo in photos))
    if packages is None:
        return known
    chosen = list(dict.fromkeys(packages))
    unknown = [name for name in chosen if name not in known]
    if unknown:
        raise InputError(f"unknown package(s) {', '.join(unknown)}; accepted: {', '.join(known)}")
    return chosen


def read_manifest(out_dir: str | os.PathLike) -> dict[str, dict]:
    """{name: entry} from out_dir/manifest.json; {} if there is none yet."""
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        return {}
    try:
        payload = json.loads(path.read_text())
        return {entry["name"]: entry for entry in payload["photos"]}
    except (ValueError, KeyError, TypeError) as error:
        raise InputError(f"{path}: not a kd_tf photo manifest ({error}); delete it and rerun "
                         f"`{FETCH_COMMAND} --out {out_dir}`") from error


def _write_manifest(out_dir: Path, entries: dict[str, dict]) -> None:
    from kd_tf.runs import write_json

    write_json(out_dir / MANIFEST, {"format": MANIFEST_FORMAT, "fetch_command": FETCH_COMMAND,
                                    "photos": [entries[name] for name in sorted(entries)]})


def _is_prepared(entry: dict | None, photo: Photo, out_dir: Path) -> bool:
    return bool(entry) and entry.get("source_sha256") == photo.sha256 and (out_dir / entry["file"]).is_file()


def _source_bytes(tree: Path, photo: Photo) -> bytes:
    """The photo's source bytes from an extracted package: the file, or its JPEG entry for .edj."""
    path = tree / photo.path
    if not path.is_file():
        raise FileNotFoundError(f"/{photo.path} is not in the package")
    raw = path.read_bytes()
    return eet_jpeg(raw, photo.entry, f"/{photo.path}") if photo.entry else raw


def _prepare(raw: bytes, photo: Photo, version: str, out_dir: Path, role: str) -> dict:
    """Decodes the source, halves it if its JPEG quality is low, writes the PNG; its manifest entry."""
    from kd_tf.images import ImageReadError, apply_orientation, exif_orientation, to_float_rgb, write_image

    decoded = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded is None:
        raise ImageReadError(f"{photo.source}: OpenCV cannot decode it")
    image = to_float_rgb(apply_orientation(decoded, exif_orientation(raw[:1 << 20])))
    quality = estimate_jpeg_quality(raw)
    reason = ALWAYS_HALVE.get(photo.name)
    if reason is None and quality is not None and quality < DOWNSCALE_BELOW_QUALITY:
        reason = f"JPEG quality {quality} < {DOWNSCALE_BELOW_QUALITY}"
    prepared = halve(image) if reason else image
    file = f"{photo.name}.png"
    write_image(out_dir / file, prepared)
    return {"name": photo.name, "file": file, "package": photo.package, "package_version": version,
            "source_path": f"/{photo.path}", "source_entry": photo.entry, "source_sha256": photo.sha256,
            "source_format": "jpeg" if raw[:2] == b"\xff\xd8" else "png", "licence": photo.licence,
            "kind": photo.kind, "jpeg_quality": quality,
            "original_size": f"{image.shape[1]}x{image.shape[0]}",
            "prepared_size": f"{prepared.shape[1]}x{prepared.shape[0]}",
            "megapixels": round(prepared.shape[0] * prepared.shape[1] / 1e6, 3),
            "downscaled": bool(reason), "downscale_reason": reason, "role": role}


def fetch(out_dir: str | os.PathLike | None = None, packages: Iterable[str] | None = None,
          workdir: str | os.PathLike | None = None, progress: Callable[[str], None] = print,
          download: Callable[[str, Path], Path] | None = None, photos: tuple[Photo, ...] = PHOTOS,
          heldout: Iterable[str] = HELDOUT2) -> dict:
    """Downloads, checks and prepares the corpus into `out_dir` (default: default_corpus_dir()).

    One package at a time: download (apt-get, or `download(package, directory) -> .deb path`),
    `dpkg-deb -x`, SHA-256 check of each listed file (a mismatch skips that file, with a warning),
    PNG + manifest entry, then the .deb and the extracted tree are deleted. Photos already prepared
    from the same source hash are kept; a package whose photos are all ready is not downloaded.
    Returns the report (also written to out_dir/fetch_report.json) with a printable "table".
    """
    from kd_tf.images import writable_folder
    from kd_tf.runs import write_json

    missing = _missing_tools(need_apt=download is None)
    if missing:
        raise InputError(f"photos fetch needs apt-get and dpkg-deb (Debian/Ubuntu); not found on PATH: "
                         f"{', '.join(missing)}. Alternatively point KD_TF_PHOTOS at a corpus fetched elsewhere")
    download = download or apt_download
    chosen = _select(packages, photos)
    out_dir = writable_folder(out_dir if out_dir is not None else default_corpus_dir(), "photo corpus folder")
    heldout = set(heldout)
    table_names = {photo.name for photo in photos}
    entries = {name: entry for name, entry in read_manifest(out_dir).items() if name in table_names}
    report = {"out_dir": str(out_dir), "packages": {}, "fetched": [], "reused": [], "skipped": []}

    def skip(photo: Photo, reason: str) -> None:
        log.warning("photo %s skipped: %s", photo.name, reason)
        progress(f"  skipped {photo.name}: {reason}")
        report["skipped"].append({"name": photo.name, "package": photo.package, "reason": reason})

    for package in chosen:
        wanted = [photo for photo in photos if photo.package == package]
        todo = [photo for photo in wanted if not _is_prepared(entries.get(photo.name), photo, out_dir)]
        report["reused"] += [photo.name for photo in wanted if photo not in todo]
        version = next((entries[p.name]["package_version"] for p in wanted if p not in todo), None)
        if todo:
            progress(f"{package}: {len(todo)} photo(s) to prepare, {len(wanted) - len(todo)} ready")
            with tempfile.TemporaryDirectory(prefix=f"kd_tf_{package}_", dir=workdir) as temporary:
                try:
                    deb = Path(download(package, Path(temporary)))
                    version = _run(["dpkg-deb", "-f", str(deb), "Version"]).strip()
                    tree = Path(temporary) / "tree"
                    _run(["dpkg-deb", "-x", str(deb), str(tree)])
                    deb.unlink()                   # disk: the extracted tree is all that is needed now
                except (ValueError, OSError) as error:
                    for photo in todo:
                        skip(photo, f"package not available: {error}")
                    todo = []
                for photo in todo:
                    try:
                        raw = _source_bytes(tree, photo)
                    except (ValueError, OSError) as error:
                        skip(photo, str(error))
                        continue
                    digest = hashlib.sha256(raw).hexdigest()
                    if digest != photo.sha256:
                        skip(photo, f"sha256 mismatch: {photo.source} has {digest}, pinned {photo.sha256} "
                                    f"(package version {version}; pinned from {PACKAGES.get(package, '?')})")
                        continue
                    try:
                        entries[photo.name] = _prepare(raw, photo, version, out_dir,
                                                       "heldout2" if photo.name in heldout else "train")
                    except (ValueError, cv2.error) as error:     # ImageReadError included
                        skip(photo, str(error))
                        continue
                    report["fetched"].append(photo.name)
                    progress(f"  {photo.name}: {entries[photo.name]['prepared_size']}"
                             f"{' (halved)' if entries[photo.name]['downscaled'] else ''}")
                _write_manifest(out_dir, entries)     # after every package: an interruption keeps the work
        ready = [entries[photo.name] for photo in wanted if photo.name in entries
                 and _is_prepared(entries[photo.name], photo, out_dir)]
        report["packages"][package] = {
            "version": version, "photos": len(wanted), "ready": len(ready),
            "fetched": sum(name in report["fetched"] for name in (p.name for p in wanted)),
            "skipped": sum(s["package"] == package for s in report["skipped"]),
            "megapixels": round(sum(entry["megapixels"] for entry in ready), 2)}
    for name, entry in entries.items():              # HELDOUT2 may have changed since the last fetch
        entry["role"] = "heldout2" if name in heldout else "train"
    _write_manifest(out_dir, entries)
    report["table"] = _fetch_table(report["packages"])
    report["report_path"] = str(write_json(out_dir / FETCH_REPORT, report))
    return report


def _fetch_table(packages: dict[str, dict]) -> str:
    from kd_tf.tables import render_table

    rows = [[name, row["version"] or "-", f"{row['ready']}/{row['photos']}", str(row["fetched"]),
             str(row["skipped"]), f"{row['megapixels']:.1f}"] for name, row in packages.items()]
    rows.append(["total", "", f"{sum(r['ready'] for r in packages.values())}/"
                              f"{sum(r['photos'] for r in packages.values())}",
                 str(sum(r["fetched"] for r in packages.values())), str(sum(r["skipped"] for r in packages.values())),
                 f"{sum(r['megapixels'] for r in packages.values()):.1f}"])
    return render_table(["package", "version", "ready", "new", "skipped", "MP"], rows)


# ---------------------------------------------------------------------------------------------
# Reading the prepared corpus

def _checked_manifest(out_dir: Path) -> dict[str, dict]:
    entries = read_manifest(out_dir)
    if not entries:
        raise FileNotFoundError(f"no photo corpus in {str(out_dir)!r} (no {MANIFEST}); get it with "
                                f"`{FETCH_COMMAND} --out {out_dir}` (about 670 MB of downloads)")
    return entries


def load_corpus(out_dir: str | os.PathLike | None = None, role: str = "train") -> dict[str, np.ndarray]:
    """{name: float32 RGB image in [0, 1]} of the prepared photos with this role ("train" or "heldout2")."""
    from kd_tf.images import read_image

    if role not in ROLES:
        raise InputError(f"role={role!r}; accepted: {', '.join(ROLES)}")
    out_dir = Path(out_dir) if out_dir is not None else default_corpus_dir()
    chosen = [entry for entry in _checked_manifest(out_dir).values() if entry["role"] == role]
    missing = [entry["file"] for entry in chosen if not (out_dir / entry["file"]).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} prepared photo(s) listed in {out_dir / MANIFEST} are missing: "
                                f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; rerun "
                                f"`{FETCH_COMMAND} --out {out_dir}` to prepare them again")
    if not chosen:
        raise InputError(f"{out_dir / MANIFEST} lists no photo with role {role!r}")
    return {entry["name"]: read_image(out_dir / entry["file"]) for entry in chosen}


def describe(out_dir: str | os.PathLike | None = None) -> dict:
    """The manifest summarised per package and role, for `python -m kd_tf photos list`."""
    from kd_tf.tables import render_table

    out_dir = Path(out_dir) if out_dir is not None else default_corpus_dir()
    entries = _checked_manifest(out_dir)
    rows, totals = [], {"train": 0, "heldout2": 0, "megapixels": 0.0, "missing": 0}
    table_order = list(PACKAGES) + sorted({entry["package"] for entry in entries.values()} - set(PACKAGES))
    for package in (name for name in table_order if any(e["package"] == name for e in entries.values())):
        group = [entry for entry in entries.values() if entry["package"] == package]
        counts = {role: sum(entry["role"] == role for entry in group) for role in ROLES}
        missing = sum(not (out_dir / entry["file"]).is_file() for entry in group)
        megapixels = round(sum(entry["megapixels"] for entry in group), 2)     # as in the fetch table
        for key, value in (*counts.items(), ("megapixels", megapixels), ("missing", missing)):
            totals[key] += value
        rows.append([package, group[0]["package_version"], str(counts["train"]), str(counts["heldout2"]),
                     str(sum(entry["downscaled"] for entry in group)), str(missing), f"{megapixels:.1f}"])
    rows.append(["total", "", str(totals["train"]), str(totals["heldout2"]),
                 str(sum(entry["downscaled"] for entry in entries.values())), str(totals["missing"]),
                 f"{totals['megapixels']:.1f}"])
    table = render_table(["package", "version", "train", "heldout2", "halved", "missing", "MP"], rows)
    return {"table": table, "report_path": str(out_dir / MANIFEST), "photos": len(entries), **totals}


HELDOUT2_CROP = 512


def heldout2_photos(directory: str | os.PathLike) -> dict:
    """The photo corpus's second held-out set, or {} when the corpus is not fetched (the main job
    needs no fetch). Reports score each photo's most textured HELDOUT2_CROP-px square, so that a 4K
    wallpaper is scored on detail rather than on sky, in seconds rather than minutes."""
    if not (Path(directory) / MANIFEST).is_file():
        return {}
    return load_corpus(directory, "heldout2")
