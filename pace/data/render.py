"""Render an NSynth-layout data set of instrument notes from any General-MIDI soundfont (SF2/SF3).

``pace data render --soundfont SF2 --out DIR --instruments N`` writes ``DIR/examples.json`` and
``DIR/audio/{note_str}.wav`` (16 kHz mono 16-bit), readable with ``data.dataset: nsynth``. Every
instrument plays the same pitches at the same velocities. Rendering the same instruments from two
soundfonts (FluidR3_GM and TimGM6mb from Debian's ``fluid-soundfont-gm`` and ``timgm6mb-soundfont``)
gives two domains with one label space: a real recording-chain shift, not a synthetic augmentation.

How: we write a type-0 standard MIDI file ourselves (1 tick = 1 ms; a program change per instrument,
notes spaced so each release dies out before the next onset), render it with the ``fluidsynth``
command (reverb and chorus off, float output at 16 kHz), then cut one clip per note at its known onset
and downmix to mono. Loading a soundfont dominates a fluidsynth run, so one file holds many notes
rather than one process per note. Same soundfont and arguments give the same bytes.

Labels follow NSynth: ``instrument_str = {family}_{source}_{GM program:03}``,
``note_str = {instrument_str}-{pitch:03}-{velocity:03}``; families and sources are mapped from the GM
program (GM has no family field; the map is ours). Notes that come out silent (a soundfont without a
sample there) are left out and listed in ``render.json``, with the settings and the soundfont's hash.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess
import tempfile
import wave
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16_000
SOUNDFONTS = {  # short names for the Debian soundfonts
    "fluidr3": "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "timgm6mb": "/usr/share/sounds/sf2/TimGM6mb.sf2",
}
GM_NAMES = (
    "Acoustic Grand Piano", "Bright Acoustic Piano", "Electric Grand Piano", "Honky-tonk Piano",
    "Electric Piano 1", "Electric Piano 2", "Harpsichord", "Clavinet", "Celesta", "Glockenspiel",
    "Music Box", "Vibraphone", "Marimba", "Xylophone", "Tubular Bells", "Dulcimer", "Drawbar Organ",
    "Percussive Organ", "Rock Organ", "Church Organ", "Reed Organ", "Accordion", "Harmonica",
    "Tango Accordion", "Acoustic Guitar (nylon)", "Acoustic Guitar (steel)", "Electric Guitar (jazz)",
    "Electric Guitar (clean)", "Electric Guitar (muted)", "Overdriven Guitar", "Distortion Guitar",
    "Guitar Harmonics", "Acoustic Bass", "Electric Bass (finger)", "Electric Bass (pick)", "Fretless Bass",
    "Slap Bass 1", "Slap Bass 2", "Synth Bass 1", "Synth Bass 2", "Violin", "Viola", "Cello", "Contrabass",
    "Tremolo Strings", "Pizzicato Strings", "Orchestral Harp", "Timpani", "String Ensemble 1",
    "String Ensemble 2", "Synth Strings 1", "Synth Strings 2", "Choir Aahs", "Voice Oohs", "Synth Voice",
    "Orchestra Hit", "Trumpet", "Trombone", "Tuba", "Muted Trumpet", "French Horn", "Brass Section",
    "Synth Brass 1", "Synth Brass 2", "Soprano Sax", "Alto Sax", "Tenor Sax", "Baritone Sax", "Oboe",
    "English Horn", "Bassoon", "Clarinet", "Piccolo", "Flute", "Recorder", "Pan Flute", "Blown Bottle",
    "Shakuhachi", "Whistle", "Ocarina", "Lead 1 (square)", "Lead 2 (sawtooth)", "Lead 3 (calliope)",
    "Lead 4 (chiff)", "Lead 5 (charang)", "Lead 6 (voice)", "Lead 7 (fifths)", "Lead 8 (bass + lead)",
    "Pad 1 (new age)", "Pad 2 (warm)", "Pad 3 (polysynth)", "Pad 4 (choir)", "Pad 5 (bowed)",
    "Pad 6 (metallic)", "Pad 7 (halo)", "Pad 8 (sweep)", "FX 1 (rain)", "FX 2 (soundtrack)",
    "FX 3 (crystal)", "FX 4 (atmosphere)", "FX 5 (brightness)", "FX 6 (goblins)", "FX 7 (echoes)",
    "FX 8 (sci-fi)", "Sitar", "Banjo", "Shamisen", "Koto", "Kalimba", "Bagpipe", "Fiddle", "Shanai",
    "Tinkle Bell", "Agogo", "Steel Drums", "Woodblock", "Taiko Drum", "Melodic Tom", "Synth Drum",
    "Reverse Cymbal", "Guitar Fret Noise", "Breath Noise", "Seashore", "Bird Tweet", "Telephone Ring",
    "Helicopter", "Applause", "Gunshot",
)
# GM groups of 8 programs -> NSynth family; 120-127 are sound effects and have none
_GROUP_FAMILY = ("keyboard", "mallet", "organ", "guitar", "bass", "string", "string", "brass", "reed", "flute",
                 "synth_lead", "synth_lead", "synth_lead", "string", "mallet")
_FAMILY_OVERRIDE = {21: "reed", 22: "reed", 23: "reed", 47: "mallet", 52: "vocal", 53: "vocal", 54: "vocal",
                    104: "guitar", 105: "guitar", 106: "guitar", 108: "mallet", 109: "reed", 111: "reed"}
_SYNTHETIC = {38, 39, 50, 51, 54, 62, 63, 118, *range(80, 104)}
_ELECTRONIC = {2, 4, 5, 16, 17, 18, *range(26, 32), *range(33, 38)}
#: default instrument order: round-robin over the 10 non-vocal families, so the first N are varied
DEFAULT_PROGRAMS = (0, 24, 32, 40, 56, 65, 73, 19, 11, 80,
                    4, 27, 33, 42, 57, 68, 72, 16, 12, 81,
                    6, 25, 35, 45, 60, 71, 75, 17, 13, 87,
                    7, 30, 38, 48, 61, 70, 79, 18, 14, 84)
DEFAULT_PITCHES = (48, 52, 55, 58, 60, 64, 67, 72)
DEFAULT_VELOCITIES = (50, 75, 100, 127)
_SILENT = 1e-4  # peak below this: no sample sounded
_NOTES_PER_FILE = 256  # bounds one fluidsynth output file (~80 MB of float stereo at 2 s per note)


class RenderError(RuntimeError):
    """Rendering cannot run (no fluidsynth, no soundfont) or fluidsynth failed."""


def family_of(program: int) -> str:
    if not 0 <= program < 120:
        raise ValueError(f"GM program {program} has no instrument family (0-119 are instruments, "
                         "120-127 sound effects)")
    return _FAMILY_OVERRIDE.get(program, _GROUP_FAMILY[program // 8])


def source_of(program: int) -> str:
    return "synthetic" if program in _SYNTHETIC else "electronic" if program in _ELECTRONIC else "acoustic"


def instrument_str(program: int) -> str:
    return f"{family_of(program)}_{source_of(program)}_{program:03d}"


@dataclass
class RenderSpec:
    soundfont: str
    programs: list[int]
    pitches: list[int] = field(default_factory=lambda: list(DEFAULT_PITCHES))
    velocities: list[int] = field(default_factory=lambda: list(DEFAULT_VELOCITIES))
    seconds: float = 1.0  # clip length
    hold: float = 0.75  # note-on to note-off, as a fraction of the clip (NSynth: 3 s of 4 s)
    gap: float = 1.0  # silence after each clip so the release has died before the next note
    gain: float = 1.0  # fluidsynth -g; at its default (0.2) notes peak near 0.03

    def check(self) -> None:
        if not self.programs:
            raise ValueError("no instruments to render")
        if len(set(self.programs)) != len(self.programs):
            raise ValueError(f"GM programs repeat: {self.programs}")
        for p in self.programs:
            family_of(p)
        for name, vals in (("pitch", self.pitches), ("velocity", self.velocities)):
            if not vals or any(not 1 <= v <= 127 for v in vals) or len(set(vals)) != len(vals):
                raise ValueError(f"{name} values must be distinct MIDI values 1..127, got {vals}")
        if not (0.1 <= self.seconds <= 10 and 0 < self.hold <= 1 and self.gap >= 0 and self.gain > 0):
            raise ValueError("need 0.1 <= seconds <= 10, 0 < hold <= 1, gap >= 0, gain > 0")


def resolve_soundfont(name: str) -> Path:
    path = Path(SOUNDFONTS.get(name.lower(), name))
    if not path.is_file():
        known = name.lower() in SOUNDFONTS
        hint = " (install Debian package fluid-soundfont-gm or timgm6mb-soundfont)" if known else ""
        raise FileNotFoundError(f"soundfont not found: {path}{hint}")
    return path


def fluidsynth_binary() -> str:
    exe = shutil.which("fluidsynth")
    if exe is None:
        raise RenderError("the fluidsynth command is not installed (Debian: apt-get install fluidsynth)")
    return exe


# ---------------------------------------------------------------- MIDI


def _vlq(n: int) -> bytes:
    """MIDI variable-length quantity: 7 bits per byte, high bit set on all but the last."""
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def midi_file(events: list[tuple[int, bytes]]) -> bytes:
    """A type-0 SMF from (time in ms, event bytes); 1000 ticks per quarter at 1 s per quarter = 1 ms ticks."""
    track, now = bytearray(), 0
    track += _vlq(0) + b"\xff\x51\x03" + (1_000_000).to_bytes(3, "big")  # tempo: 1e6 us per quarter
    for t, data in sorted(events, key=lambda e: e[0]):  # stable: same-time events keep their order
        track += _vlq(t - now) + data
        now = t
    track += _vlq(0) + b"\xff\x2f\x00"  # end of track
    return b"MThd" + struct.pack(">IHHH", 6, 0, 1, 1000) + b"MTrk" + struct.pack(">I", len(track)) + bytes(track)


@dataclass(frozen=True)
class _Note:
    program: int
    pitch: int
    velocity: int
    onset_ms: int


def _schedule(spec: RenderSpec, notes: list[tuple[int, int, int]]) -> tuple[list[_Note], bytes]:
    clip_ms, hold_ms = round(spec.seconds * 1000), round(spec.seconds * spec.hold * 1000)
    step = clip_ms + round(spec.gap * 1000)
    events, placed, t, program = [], [], 100, None  # 100 ms lead-in
    for prog, pitch, vel in notes:
        if prog != program:
            events.append((t, bytes([0xC0, prog])))  # program change, channel 1 (not 10: drums)
            program = prog
        events.append((t, bytes([0x90, pitch, vel])))
        events.append((t + hold_ms, bytes([0x80, pitch, 64])))
        placed.append(_Note(prog, pitch, vel, t))
        t += step
    events.append((t, bytes([0xB0, 123, 0])))  # all notes off, then the file ends one gap later
    return placed, midi_file(events)


# ---------------------------------------------------------------- rendering


def _run_fluidsynth(exe: str, soundfont: Path, midi: Path, wav: Path, gain: float) -> np.ndarray:
    cmd = [exe, "-ni", "-q", "-g", f"{gain:g}", "-R", "0", "-C", "0", "-r", str(SR), "-O", "float",
           "-T", "wav", "-F", str(wav), str(soundfont), str(midi)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)  # failures reported below
    if proc.returncode != 0 or not wav.is_file():
        raise RenderError(f"fluidsynth failed ({proc.returncode}) on {soundfont}: {proc.stderr.strip()[-500:]}")
    data, sr = sf.read(str(wav), dtype="float32", always_2d=True)
    if sr != SR:
        raise RenderError(f"fluidsynth wrote {sr} Hz, expected {SR}")
    return data.mean(axis=1)  # stereo -> mono


def render_dataset(spec: RenderSpec, out: str | Path, overwrite: bool = False) -> dict:
    """Render ``spec`` into ``out`` (NSynth layout). Returns the summary also written to render.json."""
    from pace.data.nsynth import FAMILIES, SOURCES  # here: keeps torch out of CLI start-up

    spec.check()
    out = Path(out)
    soundfont = resolve_soundfont(spec.soundfont)
    exe = fluidsynth_binary()
    if (out / "examples.json").exists() and not overwrite:
        raise FileExistsError(f"{out} already holds a data set (examples.json); pass --overwrite to replace it")
    audio = out / "audio"
    if audio.is_dir():
        shutil.rmtree(audio)
    audio.mkdir(parents=True)
    notes = [(p, n, v) for p in spec.programs for n in spec.pitches for v in spec.velocities]
    clip = round(spec.seconds * SR)
    examples, silent, clipped = {}, [], 0
    with tempfile.TemporaryDirectory(prefix="pace-render-") as tmp:
        for start in range(0, len(notes), _NOTES_PER_FILE):
            placed, midi = _schedule(spec, notes[start:start + _NOTES_PER_FILE])
            mid, wav = Path(tmp) / "notes.mid", Path(tmp) / "notes.wav"
            mid.write_bytes(midi)
            mono = _run_fluidsynth(exe, soundfont, mid, wav, spec.gain)
            for note in placed:
                a = note.onset_ms * SR // 1000
                x = mono[a:a + clip]
                x = np.pad(x, (0, clip - len(x)))  # the file may end inside the last release
                inst = instrument_str(note.program)
                key = f"{inst}-{note.pitch:03d}-{note.velocity:03d}"
                peak = float(np.abs(x).max())
                if peak < _SILENT:
                    silent.append(key)
                    continue
                if peak > 1.0:
                    clipped += 1
                    x = np.clip(x, -1.0, 1.0)
                _write_wav(audio / f"{key}.wav", x)
                fam, src = family_of(note.program), source_of(note.program)
                examples[key] = {
                    "note": len(examples), "note_str": key, "instrument": note.program,
                    "instrument_str": inst, "pitch": note.pitch, "velocity": note.velocity,
                    "sample_rate": SR, "qualities": [0] * 10, "qualities_str": [],
                    "instrument_family": FAMILIES.index(fam), "instrument_family_str": fam,
                    "instrument_source": SOURCES.index(src), "instrument_source_str": src,
                    "gm_name": GM_NAMES[note.program], "soundfont": soundfont.name,
                }
            wav.unlink()
    if not examples:
        raise RenderError(f"every note rendered silent with {soundfont}; is it a General-MIDI soundfont?")
    (out / "examples.json").write_text(json.dumps(examples, indent=1, sort_keys=True))
    summary = {"soundfont": str(soundfont), "soundfont_sha256": _sha256(soundfont),
               "fluidsynth": _version(exe), "spec": asdict(spec), "instruments": len(spec.programs),
               "notes": len(examples), "silent_dropped": silent, "clipped": clipped}
    (out / "render.json").write_text(json.dumps(summary, indent=1))
    return summary


def _write_wav(path: Path, x: np.ndarray) -> None:
    # stdlib writer: soundfile syncs each file to disk on close, which dominated rendering time
    pcm = np.round(np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(pcm.tobytes())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _version(exe: str) -> str:
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
    return (proc.stdout.strip().splitlines() or ["unknown"])[0]


def programs_for(instruments: int | None, programs: list[int] | None) -> list[int]:
    """Explicit GM programs, else the first N of the default round-robin order."""
    if programs:
        return programs if instruments is None else programs[:instruments]
    n = 10 if instruments is None else instruments
    if not 1 <= n <= len(DEFAULT_PROGRAMS):
        raise ValueError(f"--instruments must be 1..{len(DEFAULT_PROGRAMS)} (or list --programs), got {n}")
    return list(DEFAULT_PROGRAMS[:n])


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None


def add_render_cli(sub) -> None:
    r = sub.add_parser("render", help="render an NSynth-layout data set of GM instrument notes with fluidsynth")
    r.add_argument("--soundfont", required=True,
                   help=f"SF2/SF3 file, or a short name: {', '.join(SOUNDFONTS)}")
    r.add_argument("--out", required=True, help="output folder (examples.json + audio/)")
    r.add_argument("--instruments", type=int, help="first N of the default instrument list (default 10)")
    r.add_argument("--programs", type=_ints, help="GM programs 0-119, comma-separated (instead of the default list)")
    r.add_argument("--pitches", type=_ints, default=list(DEFAULT_PITCHES), help="MIDI pitches, comma-separated")
    r.add_argument("--velocities", type=_ints, default=list(DEFAULT_VELOCITIES), help="MIDI velocities")
    r.add_argument("--seconds", type=float, default=1.0, help="clip length (default 1.0)")
    r.add_argument("--gain", type=float, default=1.0, help="fluidsynth gain (default 1.0)")
    r.add_argument("--overwrite", action="store_true", help="replace a data set already in --out")
    r.set_defaults(func=cmd_render)


def cmd_render(args) -> int:
    spec = RenderSpec(soundfont=args.soundfont, programs=programs_for(args.instruments, args.programs),
                      pitches=args.pitches, velocities=args.velocities, seconds=args.seconds, gain=args.gain)
    s = render_dataset(spec, args.out, overwrite=args.overwrite)
    print(f"{args.out}: {s['notes']} notes of {s['instruments']} instruments from {Path(s['soundfont']).name} "
          f"({len(s['silent_dropped'])} silent left out, {s['clipped']} clipped)")
    return 0
