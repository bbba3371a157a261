"""The synthetic world and its script: rooms, places, objects, people, and what the wearer does, second by second.

Pure Python + numpy, deterministic from a seed. `build_world(rng)` lays out the rooms; `build_script(world,
duration, rng)` plays the wearer's day as a list of `Shot`s (what the camera shows from t0 to t1), the
ground-truth `events` with their times, and the object moves the renderer must show. `segment_captions` turns
the events into the first-person caption of each segment ("I put the red cup on the shelf in the kitchen.").

Coordinates: each room is a panorama PANO_H pixels high; a place has a centre x, a width and the y of the
surface objects stand on. The camera looks at a VIEW_W x VIEW_H window of it (see render.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

VIEW_W, VIEW_H = 256, 192  # rendered frame size
PANO_H = VIEW_H + 8  # panorama height: 8 px of room for head bob
FLOOR_Y = 142  # wall / floor boundary in panorama pixels
GAP = 34  # between places

# BGR colours by name; the names are what captions and questions say.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (40, 40, 215), "blue": (205, 95, 30), "green": (50, 160, 50),
    "yellow": (30, 215, 235), "purple": (150, 50, 135), "orange": (20, 135, 250),
}
OBJECT_KINDS = ("cup", "keys", "book", "phone", "bowl", "bottle")

# kind -> (width px, surface y or None when nothing can be put on it, can hold a note)
PLACE_KINDS: dict[str, tuple[int, int | None, bool]] = {
    "door": (70, None, True), "counter": (120, 112, False), "sink": (100, 112, False),
    "fridge": (78, None, True), "shelf": (92, 78, False), "table": (120, 122, False),
    "desk": (130, 116, False), "bookshelf": (92, 74, False), "whiteboard": (116, None, True),
    "cabinet": (84, 104, False), "sofa": (150, 126, False), "tv": (120, None, False),
    "coffee table": (110, 136, False), "bed": (170, 124, False), "nightstand": (70, 120, False),
    "dresser": (104, 100, False),
}
ROOM_LAYOUTS: dict[str, dict[str, Any]] = {
    "kitchen": {"wall": (168, 206, 222), "floor": (92, 118, 150),
                "places": ["door", "counter", "sink", "fridge", "shelf", "table"]},
    "office": {"wall": (205, 196, 180), "floor": (80, 92, 100),
               "places": ["door", "desk", "bookshelf", "whiteboard", "cabinet"]},
    "living room": {"wall": (150, 190, 170), "floor": (60, 90, 125),
                    "places": ["door", "sofa", "tv", "coffee table", "shelf"]},
    "bedroom": {"wall": (200, 175, 205), "floor": (110, 130, 160),
                "places": ["door", "bed", "nightstand", "dresser"]},
}
# What the wearer can be busy doing, where.
ACTIVITIES: dict[str, tuple[str, str]] = {
    "washing dishes": ("kitchen", "sink"), "cooking": ("kitchen", "counter"),
    "typing on the laptop": ("office", "desk"), "watching tv": ("living room", "tv"),
    "folding clothes": ("bedroom", "bed"),
}
SKIN = {"light": (170, 195, 235), "tan": (120, 165, 215), "brown": (70, 110, 160), "dark": (45, 70, 105)}
HAIR = {"black": (30, 30, 30), "brown": (30, 60, 100), "blonde": (90, 200, 230), "grey": (165, 165, 165),
        "red": (30, 70, 185)}
HAIR_STYLES = ("short", "long", "bald", "curly")
GLASSES = ("none", "round", "square")
WEARER_SKIN = (150, 178, 222)

FOODS = ("MILK", "EGGS", "BREAD", "RICE", "APPLES", "COFFEE", "TEA", "BUTTER", "LEMONS")
NAMES = ("ANNA", "BEN", "MIA", "LEO", "SAM", "ZOE", "OMAR", "IDA")
WORDS = ("BLUE", "FOX", "STAR", "MOON", "TREE", "OWL", "SUN")


@dataclass
class Place:
    name: str
    room: str
    x: int  # centre, panorama px
    width: int
    surface_y: int | None  # objects stand on this y; None: nothing can be put here
    holds_note: bool

    def slots(self) -> list[int]:
        """x of each spot an object can stand on."""
        n = max(1, self.width // 36)
        step = self.width / n
        return [int(self.x - self.width / 2 + step * (i + 0.5)) for i in range(n)]


@dataclass
class Room:
    name: str
    wall: tuple[int, int, int]
    floor: tuple[int, int, int]
    width: int  # panorama width
    places: dict[str, Place]
    light: float  # base brightness gain
    picture: tuple[int, int, int]  # colour of a framed picture that helps tell rooms apart


@dataclass
class Thing:
    """A movable object, named by colour and kind: "red cup"."""

    name: str
    kind: str
    colour: str


@dataclass
class Person:
    tag: str  # "<face_N>"
    skin: str
    hair: str
    hair_style: str
    glasses: str
    shirt: str


@dataclass
class World:
    rooms: dict[str, Room]
    things: dict[str, Thing]
    people: list[Person]
    start: dict[str, tuple[str, str, int]]  # thing -> (room, place, slot) at t = 0
    start_room: str

    def place(self, room: str, name: str) -> Place:
        return self.rooms[room].places[name]

    def to_json(self) -> dict[str, Any]:
        return {
            "rooms": {r.name: {"places": list(r.places), "light": round(r.light, 3)} for r in self.rooms.values()},
            "objects": [{"name": t.name, "object": t.kind, "colour": t.colour,
                         "start": {"room": self.start[t.name][0], "place": self.start[t.name][1]}}
                        for t in self.things.values()],
            "people": [asdict(p) for p in self.people],
            "activities": {a: {"room": r, "place": p} for a, (r, p) in ACTIVITIES.items()},
            "start_room": self.start_room,
        }


def preposition(place: str) -> str:
    return "in" if place == "sink" else ("at" if place in ("door", "tv", "fridge", "whiteboard") else "on")


def where(place: str, room: str) -> str:
    """'on the shelf in the kitchen'"""
    return f"{preposition(place)} the {place} in the {room}"


ACTIVITY_PHRASES = {
    "washing dishes": "washing dishes at the sink", "cooking": "cooking at the counter",
    "typing on the laptop": "typing on the laptop at the desk", "watching tv": "watching tv",
    "folding clothes": "folding clothes on the bed",
}


def doing(activity: str, room: str) -> str:
    """'washing dishes at the sink in the kitchen'"""
    return f"{ACTIVITY_PHRASES[activity]} in the {room}"


def build_world(rng: np.random.Generator, n_objects: int = 8, n_people: int = 4) -> World:
    rooms: dict[str, Room] = {}
    for name, layout in ROOM_LAYOUTS.items():
        places: dict[str, Place] = {}
        x = 40
        for pname in layout["places"]:
            w, surface, note = PLACE_KINDS[pname]
            places[pname] = Place(pname, name, x + w // 2, w, surface, note)
            x += w + GAP
        picture = tuple(int(c) for c in rng.integers(40, 220, size=3))
        rooms[name] = Room(name, layout["wall"], layout["floor"], max(x + 6, VIEW_W + 40), places,
                           float(rng.uniform(0.85, 1.1)), picture)  # type: ignore[arg-type]

    # Objects: distinct (colour, kind) pairs, each kind at most twice so "the cup" is rarely ambiguous.
    pairs = [(c, k) for k in OBJECT_KINDS for c in COLOURS]
    order = rng.permutation(len(pairs))
    things: dict[str, Thing] = {}
    per_kind: dict[str, int] = {}
    for i in order:
        colour, kind = pairs[int(i)]
        if per_kind.get(kind, 0) >= 2 or len(things) >= n_objects:
            continue
        per_kind[kind] = per_kind.get(kind, 0) + 1
        things[f"{colour} {kind}"] = Thing(f"{colour} {kind}", kind, colour)

    # People: each pair differs in at least two visible attributes.
    people: list[Person] = []
    while len(people) < n_people:
        p = Person(f"<face_{len(people) + 1}>", str(rng.choice(list(SKIN))), str(rng.choice(list(HAIR))),
                   str(rng.choice(HAIR_STYLES)), str(rng.choice(GLASSES)), str(rng.choice(list(COLOURS))))
        attrs = ("skin", "hair", "hair_style", "glasses", "shirt")
        if all(sum(getattr(p, a) != getattr(q, a) for a in attrs) >= 2 for q in people):
            people.append(p)

    occupied: set[tuple[str, str, int]] = set()
    start: dict[str, tuple[str, str, int]] = {}
    surfaces = [(r.name, p.name) for r in rooms.values() for p in r.places.values() if p.surface_y is not None]
    for name in things:
        while True:
            room, pname = surfaces[int(rng.integers(len(surfaces)))]
            free = [s for s in range(len(rooms[room].places[pname].slots())) if (room, pname, s) not in occupied]
            if free:
                slot = free[int(rng.integers(len(free)))]
                occupied.add((room, pname, slot))
                start[name] = (room, pname, slot)
                break
    return World(rooms, things, people, start, str(rng.choice(list(rooms))))


@dataclass
class Shot:
    """What the camera shows from t0 to t1: `kind` drives the renderer, the rest are its arguments."""

    t0: float
    t1: float
    kind: str  # look | pick | put | walk_out | walk_in | meet | sign | activity
    room: str
    x0: float  # view centre at t0 (panorama px)
    x1: float  # view centre after the pan
    place: str | None = None
    thing: str | None = None
    slot: int | None = None
    person: str | None = None
    text: str | None = None
    activity: str | None = None
    holding: str | None = None  # thing carried in the hand during this shot
    to_room: str | None = None

    def describe(self, world: World) -> str:
        """What I was doing, as an answer to "what was I doing at T?"."""
        if self.kind == "pick":
            return f"picking up the {self.thing} from the {self.place}"
        if self.kind == "put":
            return f"putting the {self.thing} {where(self.place or '', self.room)}"
        if self.kind == "meet":
            return f"talking with {self.person} in the {self.room}"
        if self.kind == "sign":
            return f"reading a note {where(self.place or '', self.room)}"
        if self.kind == "activity":
            return doing(self.activity or "", self.room)
        if self.kind in ("walk_out", "walk_in"):
            return f"walking to the {self.to_room or self.room}"
        return f"looking around the {self.room}"


@dataclass
class Script:
    duration: float
    shots: list[Shot]
    events: list[dict[str, Any]]
    moves: list[tuple[float, str, tuple[str, str, int] | None]]  # (t, thing, new spot or None = in the hand)
    notes: list[str] = field(default_factory=list)  # every note text shown (questions draw distractors nearby)


def note_text(rng: np.random.Generator) -> str:
    kind = int(rng.integers(6))
    if kind == 0:
        return f"BUY {rng.choice(FOODS)}"
    if kind == 1:
        return f"CALL {rng.choice(NAMES)} {int(rng.integers(1, 10))}PM"
    if kind == 2:
        return f"ROOM {int(rng.integers(100, 500))}"
    if kind == 3:
        return f"WIFI {rng.choice(WORDS)}{int(rng.integers(10, 100))}"
    if kind == 4:
        return f"MEETING {int(rng.integers(1, 13))}:{int(rng.choice([0, 15, 30, 45])):02d}"
    return f"PIN {int(rng.integers(1000, 10000))}"


class _Director:
    """Plays the wearer's actions one after another, appending shots, events and object moves."""

    def __init__(self, world: World, duration: float, rng: np.random.Generator) -> None:
        self.w, self.duration, self.rng = world, duration, rng
        self.t = 0.0
        self.room = world.start_room
        self.x = float(world.rooms[self.room].width / 2)
        self.spots = dict(world.start)  # thing -> (room, place, slot)
        self.shots: list[Shot] = []
        self.events: list[dict[str, Any]] = []
        self.moves: list[tuple[float, str, tuple[str, str, int] | None]] = []
        self.notes: list[str] = []

    # -- helpers ---------------------------------------------------------------------------------------
    def left(self) -> float:
        return self.duration - self.t

    def clamp_x(self, room: str, x: float) -> float:
        return float(min(max(x, VIEW_W / 2), self.w.rooms[room].width - VIEW_W / 2))

    def shot(self, seconds: float, kind: str, target_x: float, **kw: Any) -> Shot:
        x1 = self.clamp_x(self.room, target_x)
        s = Shot(round(self.t, 3), round(self.t + seconds, 3), kind, self.room, self.x, x1, **kw)
        self.shots.append(s)
        self.t = s.t1
        self.x = x1
        return s

    def event(self, t: float, kind: str, description: str, **kw: Any) -> None:
        e = {"t": round(t, 3), "t_end": round(kw.pop("t_end", t), 3), "type": kind, "room": self.room}
        e.update(kw)
        e["description"] = description
        self.events.append(e)

    def free_slots(self, room: str, place: str) -> list[int]:
        taken = {s for (r, p, s) in self.spots.values() if r == room and p == place}
        return [i for i in range(len(self.w.place(room, place).slots())) if i not in taken]

    # -- actions ---------------------------------------------------------------------------------------
    def walk(self, room: str, holding: str | None = None) -> None:
        door = self.w.place(self.room, "door")
        self.shot(2.0, "walk_out", door.x, place="door", holding=holding, to_room=room)
        prev, self.room = self.room, room
        self.x = self.clamp_x(room, self.w.place(room, "door").x)
        s = self.shot(2.0, "walk_in", self.w.rooms[room].width / 2, place="door", holding=holding, to_room=room)
        self.event(s.t0, "enter_room", f"I walked into the {room}.", from_room=prev)

    def look(self, seconds: float) -> None:
        self.shot(seconds, "look", self.rng.uniform(0, self.w.rooms[self.room].width), holding=None)

    def move_thing(self) -> bool:
        here = [n for n, (r, _, _) in self.spots.items() if r == self.room]
        if not here:
            return False
        name = here[int(self.rng.integers(len(here)))]
        room, place, slot = self.spots[name]
        thing = self.w.things[name]
        p = self.w.place(room, place)
        dur = float(self.rng.uniform(2.6, 3.6))
        s = self.shot(dur, "pick", p.x, place=place, thing=name, slot=slot)
        t_pick = s.t0 + 0.7 * dur
        self.moves.append((round(t_pick, 3), name, None))
        del self.spots[name]
        self.event(t_pick, "pick_up", f"I picked up the {name} from the {place} in the {room}.",
                   object=thing.kind, colour=thing.colour, thing=name, **{"from": place})
        # Put it down here (60 %) or carry it to another room.
        if self.rng.random() < 0.4:
            self.walk(str(self.rng.choice([r for r in self.w.rooms if r != self.room])), holding=name)
        targets = [(pl.name, self.free_slots(self.room, pl.name)) for pl in self.w.rooms[self.room].places.values()
                   if pl.surface_y is not None and not (self.room == room and pl.name == place)]
        targets = [(pl, fs) for pl, fs in targets if fs]
        if not targets:  # everything full: put it back where it was
            targets = [(place, [slot])] if self.room == room else []
        if not targets:
            targets = [(pl.name, self.free_slots(self.room, pl.name)) for pl in self.w.rooms[self.room].places.values()
                       if pl.surface_y is not None]
            targets = [(pl, fs) for pl, fs in targets if fs]
        if not targets:  # carried into a room whose every surface is full: take it back to where it was
            self.walk(room, holding=name)
            targets = [(place, [slot])]
        to_place, free = targets[int(self.rng.integers(len(targets)))]
        to_slot = free[int(self.rng.integers(len(free)))]
        q = self.w.place(self.room, to_place)
        dur = float(self.rng.uniform(2.6, 3.6))
        s = self.shot(dur, "put", q.x, place=to_place, thing=name, slot=to_slot, holding=name)
        t_put = s.t0 + 0.7 * dur
        self.spots[name] = (self.room, to_place, to_slot)
        self.moves.append((round(t_put, 3), name, (self.room, to_place, to_slot)))
        self.event(t_put, "put_down", f"I put the {name} {where(to_place, self.room)}.",
                   object=thing.kind, colour=thing.colour, thing=name, to=to_place,
                   from_room=room, from_place=place)
        return True

    def meet(self) -> None:
        person = self.w.people[int(self.rng.integers(len(self.w.people)))]
        dur = float(self.rng.uniform(7.0, 13.0))
        s = self.shot(dur, "meet", self.rng.uniform(0, self.w.rooms[self.room].width), person=person.tag)
        self.event(s.t0 + 1.0, "meet", f"I met {person.tag} in the {self.room}.", person=person.tag, t_end=s.t1)

    def read_note(self) -> bool:
        places = [p for p in self.w.rooms[self.room].places.values() if p.holds_note]
        if not places:
            return False
        if len(places) > 1:  # notes go on the fridge or the whiteboard where there is one, else on the door
            places = [p for p in places if p.name != "door"]
        p = places[int(self.rng.integers(len(places)))]
        text = note_text(self.rng)
        self.notes.append(text)
        dur = float(self.rng.uniform(5.0, 7.0))
        s = self.shot(dur, "sign", p.x, place=p.name, text=text)
        self.event(s.t0 + 1.5, "read_sign", f'I read a note {where(p.name, self.room)} that said "{text}".',
                   place=p.name, text=text, t_end=s.t1)
        return True

    def activity(self) -> None:
        here = [a for a, (r, _) in ACTIVITIES.items() if r == self.room]
        if not here:
            a = str(self.rng.choice(list(ACTIVITIES)))
            self.walk(ACTIVITIES[a][0])
        else:
            a = here[int(self.rng.integers(len(here)))]
        place = ACTIVITIES[a][1]
        dur = float(self.rng.uniform(10.0, 20.0))
        s = self.shot(dur, "activity", self.w.place(self.room, place).x, place=place, activity=a)
        self.event(s.t0 + 0.5, "activity", f"I was {doing(a, self.room)}.",
                   activity=a, place=place, t_end=s.t1)

    def run(self) -> None:
        # Short clips still show one of each kind of action; then a weighted random mix.
        first = ["move", "meet", "note", "activity"]
        self.rng.shuffle(first)
        kinds = ["move", "meet", "note", "activity", "walk", "look"]
        weights = np.array([0.34, 0.15, 0.13, 0.18, 0.1, 0.1])
        self.look(float(self.rng.uniform(3.0, 5.0)))
        n = 0
        while self.left() > 0:
            kind = first[n] if n < len(first) else str(self.rng.choice(kinds, p=weights))
            n += 1
            budget = {"move": 16.0, "meet": 13.0, "note": 7.0, "activity": 24.0, "walk": 7.0, "look": 8.0}[kind]
            if self.left() < budget + 1.0:
                self.look(self.left())
                break
            if kind == "move":
                if not self.move_thing():
                    rooms_with = sorted({r for (r, _, _) in self.spots.values()} - {self.room})
                    self.walk(str(self.rng.choice(rooms_with)))
                    self.move_thing()
            elif kind == "meet":
                self.meet()
            elif kind == "note":
                if not self.read_note():
                    self.walk(str(self.rng.choice([r for r in self.w.rooms if r != self.room])))
                    self.read_note()
            elif kind == "activity":
                self.activity()
            elif kind == "walk":
                self.walk(str(self.rng.choice([r for r in self.w.rooms if r != self.room])))
                self.look(float(self.rng.uniform(2.0, 3.0)))
            else:
                self.look(float(self.rng.uniform(4.0, 8.0)))
        # The last shot ends exactly at the end of the clip.
        if self.shots:
            self.shots[-1].t1 = round(self.duration, 3)


def build_script(world: World, duration: float, rng: np.random.Generator) -> Script:
    d = _Director(world, duration, rng)
    d.run()
    for i, e in enumerate(d.events):
        e["id"] = i
    number_people_by_first_meeting(world, d.shots, d.events)
    return Script(duration, d.shots, d.events, d.moves, d.notes)


def number_people_by_first_meeting(world: World, shots: list[Shot], events: list[dict[str, Any]]) -> None:
    """Renumber `<face_N>` in the order the wearer first meets each person (the unmet ones after, in their old
    order). A device can only know people that way: its face registry numbers them as they appear. Numbered in
    creation order, the tags were arbitrary labels no writer could get right from the frames. Only the labels
    change: the people, their looks and every frame stay as they were drawn."""
    met = list(dict.fromkeys(e["person"] for e in events if e["type"] == "meet"))
    order = met + [p.tag for p in world.people if p.tag not in met]
    new_tag = {old: f"<face_{i + 1}>" for i, old in enumerate(order)}
    for p in world.people:
        p.tag = new_tag[p.tag]
    world.people.sort(key=lambda p: int(p.tag[6:-1]))
    for s in shots:
        if s.person:
            s.person = new_tag[s.person]
    for e in events:
        if "person" in e:
            e["description"] = e["description"].replace(e["person"], new_tag[e["person"]])
            e["person"] = new_tag[e["person"]]


def segment_captions(world: World, script: Script, segment_seconds: float) -> list[dict[str, Any]]:
    """One or two first-person sentences per segment, the most telling events first chosen, told in time order."""
    out = []
    n = int(math.ceil(script.duration / segment_seconds - 1e-9))
    for i in range(n):
        a, b = i * segment_seconds, min((i + 1) * segment_seconds, script.duration)
        inside = [e for e in script.events if a <= e["t"] < b]
        ongoing = [e for e in script.events if e["t"] < a < e["t_end"]]
        cands: list[tuple[int, float, str]] = []  # (priority, time, sentence)
        picked = {e["thing"]: e for e in inside if e["type"] == "pick_up"}
        for e in inside:
            if e["type"] == "put_down" and e["thing"] in picked:
                p = picked.pop(e["thing"])
                if p["room"] == e["room"]:
                    s = f"I moved the {e['thing']} from the {p['from']} to the {e['to']} in the {e['room']}."
                else:
                    s = (f"I took the {e['thing']} from the {p['from']} in the {p['room']} "
                         f"to the {e['to']} in the {e['room']}.")
                cands.append((0, p["t"], s))
            elif e["type"] == "put_down":
                cands.append((1, e["t"], e["description"]))
            elif e["type"] in ("meet", "read_sign"):
                cands.append((2, e["t"], e["description"]))
            elif e["type"] == "activity":
                cands.append((4, e["t"], e["description"]))
            elif e["type"] == "enter_room":
                cands.append((5, e["t"], e["description"]))
        cands += [(3, e["t"], e["description"]) for e in picked.values()]
        for e in ongoing:
            if e["type"] == "meet":
                cands.append((2, a, f"I was talking with {e['person']} in the {e['room']}."))
            elif e["type"] == "activity":
                cands.append((4, a, e["description"]))
        if not cands:
            shot = next((s for s in script.shots if s.t0 <= a < s.t1), script.shots[-1])
            if shot.holding:
                cands.append((6, a, f"I was carrying the {shot.holding}."))
            else:
                cands.append((7, a, f"I looked around the {shot.room}."))
        best = sorted(cands, key=lambda c: (c[0], c[1]))[:2]
        text = " ".join(s for _, _, s in sorted(best, key=lambda c: c[1]))
        out.append({"index": i, "t_start": round(a, 3), "t_end": round(b, 3), "caption": text})
    return out
