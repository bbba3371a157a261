"""OpenCV rendering of the synthetic world: first-person frames of a Script, written as an mp4 ('mp4v').

Speed is the design constraint (an hour of video in a few minutes on one core): each room's furniture is drawn
once into a panorama; the panorama with the objects resting in it is cached and redrawn only when an object
moves; a frame is a crop of that cache (the head's pan and bob) plus a few primitives for what moves (hand,
held object, person, note, activity) and a brightness gain for the lighting. Default 256x192 at 5 fps.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from edge_agent.errors import DataError
from edge_agent.synth.world import (COLOURS, FLOOR_Y, HAIR, PANO_H, SKIN, VIEW_H, VIEW_W, WEARER_SKIN, Person,
                                    Place, Room, Script, Shot, Thing, World)

DARK = (35, 35, 35)
WOOD = (60, 105, 150)
WOOD_DARK = (40, 75, 110)
GREY = (150, 150, 155)
WHITE = (235, 235, 235)
FONT = cv2.FONT_HERSHEY_SIMPLEX
THING_SCALE = 1.35  # objects resting in a room (about 20-30 px tall at 256x192)


def _rect(img: np.ndarray, x0: float, y0: float, x1: float, y1: float, colour, edge=DARK) -> None:
    p0, p1 = (int(x0), int(y0)), (int(x1), int(y1))
    cv2.rectangle(img, p0, p1, colour, -1)
    if edge is not None:
        cv2.rectangle(img, p0, p1, edge, 1)


# -- objects --------------------------------------------------------------------------------------------
def draw_thing(img: np.ndarray, kind: str, colour: tuple[int, int, int], x: float, y: float, s: float = 1.0) -> None:
    """A small object standing on y (its bottom), centred on x. Each kind has its own silhouette."""
    x, y = int(x), int(y)

    def r(v: float) -> int:
        return max(1, int(round(v * s)))

    if kind == "cup":
        _rect(img, x - r(7), y - r(16), x + r(7), y, colour)
        cv2.ellipse(img, (x + r(8), y - r(8)), (r(4), r(5)), 0, -90, 90, colour, max(1, r(2)))
    elif kind == "keys":
        cv2.circle(img, (x - r(3), y - r(12)), r(5), (190, 190, 190), max(1, r(2)))
        _rect(img, x - r(1), y - r(9), x + r(3), y, (170, 170, 170))
        _rect(img, x + r(3), y - r(12), x + r(11), y - r(3), colour)  # the coloured fob
    elif kind == "book":
        _rect(img, x - r(8), y - r(24), x + r(8), y, colour)
        cv2.line(img, (x - r(5), y - r(23)), (x - r(5), y - 1), DARK, 1)
        cv2.line(img, (x - r(2), y - r(18)), (x + r(5), y - r(18)), WHITE, 1)
    elif kind == "phone":
        _rect(img, x - r(6), y - r(22), x + r(6), y, colour)
        _rect(img, x - r(4), y - r(19), x + r(4), y - r(4), (20, 20, 20), None)
    elif kind == "bowl":
        cv2.ellipse(img, (x, y - r(11)), (r(13), r(11)), 0, 0, 180, colour, -1)
        cv2.ellipse(img, (x, y - r(11)), (r(13), r(3)), 0, 0, 360, DARK, 1)
    elif kind == "bottle":
        _rect(img, x - r(5), y - r(18), x + r(5), y, colour)
        _rect(img, x - r(2), y - r(25), x + r(2), y - r(18), colour)
        _rect(img, x - r(2), y - r(28), x + r(2), y - r(25), DARK, None)
    else:
        raise ValueError(f"unknown object kind {kind!r}")


# -- rooms ----------------------------------------------------------------------------------------------
def draw_place(img: np.ndarray, p: Place) -> None:
    x0, x1, cx, sy = p.x - p.width // 2, p.x + p.width // 2, p.x, p.surface_y or 0
    low = FLOOR_Y + 28
    if p.name == "door":
        _rect(img, x0, 38, x1, FLOOR_Y + 4, (45, 80, 125))
        _rect(img, x0 + 6, 44, x1 - 6, FLOOR_Y + 4, (60, 100, 145))
        cv2.circle(img, (x1 - 14, 100), 4, (60, 190, 220), -1)
    elif p.name in ("counter", "sink", "cabinet", "nightstand", "dresser"):
        body = {"counter": (150, 150, 160), "sink": (150, 150, 160), "cabinet": (110, 130, 150),
                "nightstand": WOOD, "dresser": (95, 120, 150)}[p.name]
        _rect(img, x0, sy, x1, low, body)
        _rect(img, x0 - 2, sy, x1 + 2, sy + 5, (90, 90, 95))
        n = 3 if p.name == "dresser" else 2
        for i in range(1, n):
            yy = sy + 5 + (low - sy - 5) * i // n
            cv2.line(img, (x0 + 3, yy), (x1 - 3, yy), DARK, 1)
        if p.name == "sink":
            cv2.line(img, (cx, sy), (cx, sy - 34), GREY, 3)
            cv2.line(img, (cx, sy - 34), (cx + 14, sy - 34), GREY, 3)
            _rect(img, x0 + 8, sy + 5, x1 - 8, sy + 14, (120, 110, 100))
    elif p.name == "fridge":
        _rect(img, x0, 26, x1, low, (225, 228, 230))
        cv2.line(img, (x0, 72), (x1, 72), DARK, 1)
        cv2.line(img, (x0 + 8, 40), (x0 + 8, 62), DARK, 2)
        cv2.line(img, (x0 + 8, 84), (x0 + 8, 120), DARK, 2)
    elif p.name == "shelf":
        _rect(img, x0, sy, x1, sy + 6, WOOD)
        _rect(img, x0, sy - 40, x1, sy - 34, WOOD)
        for bx in (x0 + 8, x1 - 8):
            cv2.line(img, (bx, sy + 6), (bx, sy + 14), WOOD_DARK, 2)
    elif p.name in ("table", "desk", "coffee table"):
        top = {"table": WOOD, "desk": (200, 200, 200), "coffee table": WOOD_DARK}[p.name]
        _rect(img, x0, sy, x1, sy + 7, top)
        legs = FLOOR_Y + 36 if p.name != "coffee table" else FLOOR_Y + 30
        for lx in (x0 + 6, x1 - 10):
            _rect(img, lx, sy + 7, lx + 4, legs, (70, 70, 70))
        if p.name == "desk":
            _rect(img, x1 - 44, sy + 7, x1 - 10, sy + 40, (170, 170, 170))
    elif p.name == "bookshelf":
        _rect(img, x0, 24, x1, low, WOOD_DARK)
        for yy in (sy, sy + 36, sy + 72):
            _rect(img, x0 + 4, yy, x1 - 4, yy + 4, WOOD)
        for i, bx in enumerate(range(x0 + 8, x1 - 12, 9)):  # muted book spines on the lower boards
            shade = 70 + 25 * (i % 3)
            _rect(img, bx, sy + 46, bx + 7, sy + 72, (shade, shade - 10, shade - 25), None)
    elif p.name == "whiteboard":
        _rect(img, x0, 36, x1, 108, (245, 245, 245), (110, 110, 110))
        _rect(img, x0 + 10, 108, x1 - 10, 113, GREY)
    elif p.name == "sofa":
        colour = (95, 85, 130)
        _rect(img, x0, sy - 32, x1, sy, colour)
        _rect(img, x0, sy, x1, sy + 26, (110, 100, 150))
        _rect(img, x0 - 8, sy - 12, x0 + 6, sy + 26, colour)
        _rect(img, x1 - 6, sy - 12, x1 + 8, sy + 26, colour)
    elif p.name == "tv":
        _rect(img, x0, 40, x1, 108, (25, 25, 25), (90, 90, 90))
        _rect(img, x0 + 14, 128, x1 - 14, low, WOOD_DARK)
        cv2.line(img, (cx, 108), (cx, 128), (60, 60, 60), 3)
    elif p.name == "bed":
        _rect(img, x0, sy - 44, x0 + 12, sy + 32, WOOD_DARK)
        _rect(img, x0 + 12, sy, x1, sy + 32, (200, 190, 170))
        _rect(img, x0 + 40, sy + 4, x1, sy + 32, (160, 120, 90))  # blanket
        cv2.ellipse(img, (x0 + 26, sy - 2), (13, 6), 0, 0, 360, WHITE, -1)
    else:
        raise ValueError(f"unknown place {p.name!r}")


def room_panorama(room: Room) -> np.ndarray:
    """The room's walls, floor and furniture, without the movable objects."""
    img = np.empty((PANO_H, room.width, 3), np.uint8)
    img[:FLOOR_Y] = room.wall
    img[FLOOR_Y:] = room.floor
    for x in range(0, room.width, 48):  # floor boards give the pan something to track
        cv2.line(img, (x, FLOOR_Y), (x - 20, PANO_H), tuple(int(c * 0.85) for c in room.floor), 1)
    cv2.line(img, (0, FLOOR_Y), (room.width, FLOOR_Y), tuple(int(c * 0.6) for c in room.wall), 3)
    places = sorted(room.places.values(), key=lambda p: p.x)
    # A framed picture between the first two places and a window between the next two tell rooms apart.
    if len(places) > 2:
        gx = (places[0].x + places[0].width // 2 + places[1].x - places[1].width // 2) // 2
        _rect(img, gx - 14, 30, gx + 14, 56, room.picture, (30, 30, 30))
        wx = (places[1].x + places[1].width // 2 + places[2].x - places[2].width // 2) // 2
        _rect(img, wx - 15, 22, wx + 15, 60, (235, 215, 170), (90, 90, 90))
        cv2.line(img, (wx, 22), (wx, 60), (90, 90, 90), 1)
    for p in places:
        draw_place(img, p)
    return img


# -- people, hands, notes ---------------------------------------------------------------------------------
def draw_person(img: np.ndarray, person: Person, cx: int, t: float, talking: bool) -> None:
    skin, hair = SKIN[person.skin], HAIR[person.hair]
    hy = 64
    cv2.ellipse(img, (cx, VIEW_H + 10), (52, 100), 0, 180, 360, COLOURS[person.shirt], -1)  # torso
    _rect(img, cx - 8, hy + 18, cx + 8, hy + 34, skin, None)  # neck
    if person.hair_style == "long":
        _rect(img, cx - 25, hy - 8, cx + 25, hy + 30, hair, None)
    cv2.circle(img, (cx, hy), 22, skin, -1)
    if person.hair_style in ("short", "long"):
        cv2.ellipse(img, (cx, hy - 4), (24, 19), 0, 180, 360, hair, -1)
    elif person.hair_style == "curly":
        for a in range(200, 341, 28):
            cv2.circle(img, (cx + int(20 * math.cos(math.radians(a))), hy + int(20 * math.sin(math.radians(a)))),
                       8, hair, -1)
    elif person.hair_style == "bald":
        cv2.ellipse(img, (cx, hy), (22, 22), 0, 150, 30 + 360, hair, 2)  # a fringe at the sides
    for ex in (cx - 8, cx + 8):
        cv2.circle(img, (ex, hy + 2), 2, DARK, -1)
        if person.glasses == "round":
            cv2.circle(img, (ex, hy + 2), 7, DARK, 2)
        elif person.glasses == "square":
            cv2.rectangle(img, (ex - 7, hy - 4), (ex + 7, hy + 7), DARK, 2)
    if person.glasses != "none":
        cv2.line(img, (cx - 2, hy + 1), (cx + 2, hy + 1), DARK, 2)
    mouth_open = talking and int(t * 4) % 2 == 0
    if mouth_open:
        cv2.ellipse(img, (cx, hy + 12), (6, 4), 0, 0, 360, (40, 40, 120), -1)
    else:
        cv2.line(img, (cx - 6, hy + 12), (cx + 6, hy + 12), (40, 40, 120), 2)


def draw_hand(img: np.ndarray, x: float, y: float, holding: Thing | None = None) -> None:
    """The wearer's right hand reaching to (x, y), its arm coming in from the bottom edge."""
    x, y = int(x), int(y)
    bx = int(VIEW_W * 0.8)
    cv2.line(img, (bx, VIEW_H + 20), (x + 6, y + 14), WEARER_SKIN, 16)
    cv2.ellipse(img, (x, y + 6), (11, 9), 0, 0, 360, WEARER_SKIN, -1)
    if holding is not None:
        draw_thing(img, holding.kind, COLOURS[holding.colour], x, y + 4, 1.2 * THING_SCALE)
        cv2.ellipse(img, (x + 2, y + 2), (6, 4), 0, 0, 360, WEARER_SKIN, -1)  # thumb over the object
    else:
        for dx in (-7, -2, 3, 8):
            cv2.line(img, (x + dx, y + 2), (x + dx, y - 7), WEARER_SKIN, 3)


def draw_note(img: np.ndarray, text: str, cx: int, cy: int) -> None:
    """A paper note with the text in capitals, readable at 256x192."""
    lines: list[str] = []
    for word in text.split():  # wrap at 11 characters: two short lines at most for the note texts
        if lines and len(lines[-1]) + 1 + len(word) <= 11:
            lines[-1] += " " + word
        else:
            lines.append(word)
    h = 18 * len(lines) + 14
    _rect(img, cx - 70, cy - h // 2, cx + 70, cy + h // 2, (245, 245, 240), (80, 80, 80))
    for i, line in enumerate(lines):
        (tw, _), _ = cv2.getTextSize(line, FONT, 0.55, 2)
        cv2.putText(img, line, (cx - tw // 2, cy - h // 2 + 22 + 18 * i), FONT, 0.55, (20, 20, 20), 2, cv2.LINE_AA)


def _hash01(*xs: float) -> float:
    """A deterministic pseudo-random number in [0, 1) from a few numbers (flicker, tv pictures)."""
    v = 0
    for x in xs:
        v = (v * 1000003 + int(x * 1000)) & 0xFFFFFFFF
    v ^= v >> 13
    v = (v * 0x5BD1E995) & 0xFFFFFFFF
    return ((v ^ (v >> 15)) & 0xFFFF) / 65536.0


def draw_activity(img: np.ndarray, activity: str, px: int, sy: int, t: float) -> None:
    """The moving part of an activity at the place whose centre is at view x = px (surface y = sy)."""
    swing = math.sin(2 * math.pi * t / 1.2)
    if activity == "washing dishes":
        for i in range(3):
            xx = px + 12 + i * 2 - 2
            cv2.line(img, (xx, sy - 32), (xx + int(2 * swing), sy + 4), (230, 170, 90), 1)
        cv2.ellipse(img, (px + int(14 * swing), sy + 2), (16, 5), 0, 0, 360, WHITE, -1)
        draw_hand(img, px + 14 * swing - 18, sy - 8)
    elif activity == "cooking":
        for i in range(5):
            h = 6 + int(8 * _hash01(t, i))
            fx = px - 16 + 8 * i
            cv2.fillConvexPoly(img, np.array([[fx - 4, sy], [fx + 4, sy], [fx, sy - h]], np.int32), (20, 120, 240))
        cv2.ellipse(img, (px, sy - 8), (24, 7), 0, 0, 360, (30, 30, 30), -1)
        cv2.line(img, (px + 24, sy - 8), (px + 50, sy - 14), (30, 30, 30), 4)
        a = 2 * math.pi * t / 1.5
        draw_hand(img, px + 10 * math.cos(a), sy - 26 + 4 * math.sin(a))
    elif activity == "typing on the laptop":
        _rect(img, px - 30, sy - 4, px + 30, sy, (120, 120, 120))
        _rect(img, px - 26, sy - 40, px + 26, sy - 4, (60, 60, 60))
        for i in range(4):
            w = int(10 + 30 * _hash01(int(t * 2), i))
            cv2.line(img, (px - 20, sy - 34 + 7 * i), (px - 20 + w, sy - 34 + 7 * i), (120, 220, 120), 2)
        draw_hand(img, px - 12, sy - 6 + 3 * (int(t * 6) % 2))
        draw_hand(img, px + 14, sy - 6 + 3 * (int(t * 6 + 1) % 2))
    elif activity == "watching tv":
        k = int(t / 1.5)
        colour = tuple(int(40 + 200 * _hash01(k, c)) for c in range(3))
        _rect(img, px - 56, 44, px + 56, 104, colour, None)
        cv2.circle(img, (px - 20 + int(40 * _hash01(k, 7)), 74), 12, tuple(255 - c for c in colour), -1)
    elif activity == "folding clothes":
        folded = int(t / 1.6) % 2 == 0
        h = 8 if folded else 20
        _rect(img, px - 10, sy + 4, px + 40, sy + 4 + h, (170, 120, 200))
        draw_hand(img, px + 5 + 25 * (0.5 + 0.5 * swing), sy + (0 if folded else 10))
    else:
        raise ValueError(f"unknown activity {activity!r}")


# -- frames ---------------------------------------------------------------------------------------------
def _ease(p: float) -> float:
    p = min(max(p, 0.0), 1.0)
    return p * p * (3 - 2 * p)


def _lerp(a: float, b: float, p: float) -> float:
    return a + (b - a) * min(max(p, 0.0), 1.0)


PAN_SHARE = {"look": 0.8, "walk_out": 0.5, "walk_in": 0.6, "meet": 0.2}  # part of a shot spent panning
REST = (VIEW_W * 0.68, VIEW_H + 30)  # hand out of view
HOLD = (VIEW_W * 0.74, VIEW_H - 20)  # hand carrying something at the bottom of the view


class Renderer:
    """Frames of a script, in order: `for t, bgr in Renderer(world, script, fps).frames(): ...`."""

    def __init__(self, world: World, script: Script, fps: float) -> None:
        self.world, self.script, self.fps = world, script, fps
        self.panoramas = {name: room_panorama(room) for name, room in world.rooms.items()}
        self.spots: dict[str, tuple[str, str, int] | None] = dict(world.start)
        self.cache: dict[str, np.ndarray] = {}
        self.people = {p.tag: p for p in world.people}
        self.phase = (sum(world.rooms[r].picture[0] for r in world.rooms) % 97) / 97.0 * 2 * math.pi

    def n_frames(self) -> int:
        return int(math.floor(self.script.duration * self.fps + 1e-9))

    def room_image(self, room: str) -> np.ndarray:
        """The room's panorama with the objects resting in it (redrawn only after a move)."""
        if room not in self.cache:
            img = self.panoramas[room].copy()
            for name, spot in sorted(self.spots.items()):
                if spot is not None and spot[0] == room:
                    place = self.world.place(room, spot[1])
                    thing = self.world.things[name]
                    draw_thing(img, thing.kind, COLOURS[thing.colour], place.slots()[spot[2]], place.surface_y or 0,
                               THING_SCALE)
            self.cache[room] = img
        return self.cache[room]

    def held(self) -> Thing | None:
        for name, spot in self.spots.items():
            if spot is None:
                return self.world.things[name]
        return None

    def camera(self, shot: Shot, t: float) -> tuple[int, int]:
        """Top-left corner of the view in the room panorama: the pan of the shot plus head sway and bob."""
        p = (t - shot.t0) / max(shot.t1 - shot.t0, 1e-6)
        share = PAN_SHARE.get(shot.kind, 0.4)
        walking = shot.kind in ("walk_out", "walk_in")
        cx = _lerp(shot.x0, shot.x1, _ease(p / share)) + (5 + 5 * walking) * math.sin(2 * math.pi * t / 3.3) \
            + 2 * math.sin(2 * math.pi * t / 1.3)
        bob = (3 if walking else 1.5) * math.sin(2 * math.pi * t / (0.9 if walking else 2.7))
        width = self.world.rooms[shot.room].width
        x = int(round(min(max(cx - VIEW_W / 2, 0), width - VIEW_W)))
        y = int(round(min(max(4 + bob, 0), PANO_H - VIEW_H)))
        return x, y

    def frames(self) -> Iterator[tuple[float, np.ndarray]]:
        shots, moves = self.script.shots, self.script.moves
        si = mi = 0
        for n in range(self.n_frames()):
            t = n / self.fps
            while si < len(shots) - 1 and t >= shots[si].t1:
                si += 1
            while mi < len(moves) and moves[mi][0] <= t:
                _, name, spot = moves[mi]
                old = self.spots.get(name)
                for r in {old[0] if old else None, spot[0] if spot else None} - {None}:
                    self.cache.pop(r, None)  # type: ignore[arg-type]
                self.spots[name] = spot
                mi += 1
            yield t, self.render(shots[si], t)

    def render(self, shot: Shot, t: float) -> np.ndarray:
        x, y = self.camera(shot, t)
        view = self.room_image(shot.room)[y:y + VIEW_H, x:x + VIEW_W].copy()
        p = (t - shot.t0) / max(shot.t1 - shot.t0, 1e-6)
        gain = self.world.rooms[shot.room].light * (1 + 0.12 * math.sin(2 * math.pi * t / 73 + self.phase))
        place = self.world.place(shot.room, shot.place) if shot.place else None

        def to_view(px: float, py: float) -> tuple[float, float]:
            return px - x, py - y

        held = self.held()
        if shot.kind in ("pick", "put") and place is not None and shot.slot is not None:
            ox, oy = to_view(place.slots()[shot.slot], (place.surface_y or 0) - 10)
            if shot.kind == "pick":
                if 0.4 <= p < 0.7:
                    draw_hand(view, _lerp(REST[0], ox, (p - 0.4) / 0.3), _lerp(REST[1], oy, (p - 0.4) / 0.3))
                elif p >= 0.7:
                    q = (p - 0.7) / 0.3
                    draw_hand(view, _lerp(ox, HOLD[0], q), _lerp(oy, HOLD[1], q), held)
            else:
                if p < 0.4:
                    draw_hand(view, *HOLD, held)
                elif p < 0.7:
                    q = (p - 0.4) / 0.3
                    draw_hand(view, _lerp(HOLD[0], ox, q), _lerp(HOLD[1], oy, q), held)
                else:
                    q = (p - 0.7) / 0.3
                    draw_hand(view, _lerp(ox, REST[0], q), _lerp(oy, REST[1], q))
        elif held is not None:
            draw_hand(view, HOLD[0], HOLD[1] + 2 * math.sin(2 * math.pi * t / 0.9), held)

        if shot.kind == "meet" and shot.person:
            dur = shot.t1 - shot.t0
            into, left = t - shot.t0, shot.t1 - t
            slide = max(0.0, 1.0 - into) * 160 + max(0.0, 1.0 - left) * 160  # walks in, walks off
            draw_person(view, self.people[shot.person], int(VIEW_W * 0.45 + slide), t, 1.0 < into < dur - 1.0)
        elif shot.kind == "sign" and place is not None and shot.text:
            nx, _ = to_view(place.x, 0)
            draw_note(view, shot.text, int(nx), 78)
        elif shot.kind == "activity" and place is not None and shot.activity:
            px, sy = to_view(place.x, place.surface_y or 110)
            draw_activity(view, shot.activity, int(px), int(sy), t)
        elif shot.kind == "walk_out" and place is not None and p > 0.5:
            q = (p - 0.5) / 0.5
            dx0, _ = to_view(place.x - place.width // 2 + 6, 0)
            cv2.rectangle(view, (int(dx0), 44 - y), (int(dx0 + (place.width - 12) * q), FLOOR_Y + 4 - y),
                          (20, 20, 20), -1)  # the door swings open onto a dark hallway
            gain *= 1.0 - 0.5 * q
        elif shot.kind == "walk_in" and t - shot.t0 < 0.6:
            gain *= 0.5 + 0.5 * (t - shot.t0) / 0.6
        return cv2.convertScaleAbs(view, alpha=gain)


def write_video(path: Path, world: World, script: Script, fps: float) -> int:
    """Render the script into an mp4 (MPEG-4 part 2, 'mp4v': in every OpenCV build). Returns the frame count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (VIEW_W, VIEW_H))
    if not writer.isOpened():
        raise DataError(f"video file {str(path)!r}: OpenCV cannot write mp4v here (no FFmpeg video I/O?)")
    n = 0
    try:
        for _, frame in Renderer(world, script, fps).frames():
            writer.write(frame)
            n += 1
    finally:
        writer.release()
    return n
