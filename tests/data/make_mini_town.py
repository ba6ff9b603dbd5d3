"""Write ``mini_town.xodr``: a small OpenDRIVE town with two T-junctions and curves, for offline CARLA tests.

Run ``python tests/data/make_mini_town.py`` to regenerate the fixture. Coordinates below are OpenDRIVE
(right-handed, y up); CARLA negates y when it builds the map.

Layout (metres): junction 1000 at (0, 0) and junction 2000 at (0, -60) are T-junctions joined by the straight
road 2 (x = 0, from y = -10 down to y = -50). Roads 1 and 3 form the north loop: road 1 leaves junction 1000's
west arm at (-10, 0), curves north (radius 20 m) and ends at (0, 80); road 3 continues east, curves south and
returns into the east arm at (10, 0). Roads 4 and 5 form the south loop the same way from junction 2000's east
arm at (10, -60) round y = -120 back into its west arm at (-10, -60). Each junction joins its three arms with
six one-lane connecting roads (two straight, four quarter circles of radius 10 m). Every ordinary road has one
3.5 m driving lane per direction (right-hand traffic), so every lane can reach every other lane.
"""

from __future__ import annotations

import math
from pathlib import Path

LANE_WIDTH_M = 3.5
ARM_M = 10.0  # distance from a junction centre to the end of each arm
HALF_PI = math.pi / 2
R_LOOP = 20.0
# libcarla decides "is this link a junction?" by checking that no road has that id, so junction ids must not
# collide with road ids (a junction 1 next to a road 1 silently loses every link into the junction).
JUNCTIONS = {
    1000: {
        "centre": (0.0, 0.0),
        "first_connecting_id": 100,
        "arms": {(-1, 0): (1, "start"), (1, 0): (3, "end"), (0, -1): (2, "start")},
    },
    2000: {
        "centre": (0.0, -60.0),
        "first_connecting_id": 200,
        "arms": {(1, 0): (4, "start"), (-1, 0): (5, "end"), (0, 1): (2, "end")},
    },
}


def _geometry(x: float, y: float, hdg: float, pieces: list[tuple[float, float]]) -> tuple[str, float]:
    """Chain line (curvature 0) and arc pieces ``(length_m, curvature_1pm)`` into ``<geometry>`` records."""
    lines, s = [], 0.0
    for length, curvature in pieces:
        shape = "<line/>" if curvature == 0.0 else f'<arc curvature="{curvature:.10f}"/>'
        lines.append(
            f'      <geometry s="{s:.10f}" x="{x:.10f}" y="{y:.10f}" hdg="{hdg:.10f}" '
            f'length="{length:.10f}">{shape}</geometry>'
        )
        if curvature == 0.0:
            x, y = x + length * math.cos(hdg), y + length * math.sin(hdg)
        else:
            new_hdg = hdg + length * curvature
            x += (math.sin(new_hdg) - math.sin(hdg)) / curvature
            y -= (math.cos(new_hdg) - math.cos(hdg)) / curvature
            hdg = new_hdg
        s += length
    return "\n".join(lines), s


def _lane(lane_id: int, pred: int | None, succ: int | None, mark: str) -> str:
    links = "".join(
        f'<{kind} id="{value}"/>' for kind, value in (("predecessor", pred), ("successor", succ)) if value is not None
    )
    return (
        f'          <lane id="{lane_id}" type="driving" level="false"><link>{links}</link>'
        f'<width sOffset="0" a="{LANE_WIDTH_M}" b="0" c="0" d="0"/>'
        f'<roadMark sOffset="0" type="{mark}" weight="standard" color="white" width="0.15"/></lane>'
    )


def _road(
    road_id: int,
    junction: int,
    start: tuple[float, float, float],
    pieces: list[tuple[float, float]],
    link: str,
    sections: list[tuple[float, str | None, str]],
) -> str:
    """One ``<road>``; ``sections`` lists ``(s_start, left lanes xml or None, right lanes xml)`` per lane section."""
    geometry, length = _geometry(*start, pieces)
    section_xml = []
    for s, left, right in sections:
        left_xml = f"        <left>\n{left}\n        </left>\n" if left else ""
        centre_mark = "broken" if left else "none"
        section_xml.append(
            f'      <laneSection s="{s:g}">\n'
            f"{left_xml}"
            f'        <center><lane id="0" type="none" level="false"><roadMark sOffset="0" type="{centre_mark}" '
            'weight="standard" color="white" width="0.15"/></lane></center>\n'
            f"        <right>\n{right}\n        </right>\n      </laneSection>"
        )
    return (
        f'  <road name="road{road_id}" length="{length:.10f}" id="{road_id}" junction="{junction}">\n'
        f'    <link>{link}</link>\n    <type s="0" type="town"/>\n    <planView>\n{geometry}\n    </planView>\n'
        '    <elevationProfile><elevation s="0" a="0" b="0" c="0" d="0"/></elevationProfile>\n'
        "    <lateralProfile/>\n    <lanes>\n" + "\n".join(section_xml) + "\n    </lanes>\n  </road>"
    )


def _link(kind: str, element: str, element_id: int, contact: str | None = None) -> str:
    contact_xml = f' contactPoint="{contact}"' if contact else ""
    return f'<{kind} elementType="{element}" elementId="{element_id}"{contact_xml}/>'


def _two_way_road(
    road_id: int,
    start: tuple[float, float, float],
    pieces: list[tuple[float, float]],
    pred: tuple[str, int, str | None],
    succ: tuple[str, int, str | None],
    splits: tuple[float, ...] = (),
    added_lane_section: int | None = None,
) -> str:
    """A road with lanes 1 and -1; lane-level links only towards ordinary roads (junctions use their tables).

    :param splits: arc lengths (metres, increasing, inside the road) where a new lane section starts; the lanes
        of consecutive sections are linked to the lane with the same id.
    :param added_lane_section: index of a lane section (not the last) that gets a second right lane, -2, which
        starts there and merges into lane -1 of the next section (the lane count grows from 1 to 2 and back, as
        in the larger towns). libcarla links nothing *into* such a lane: it is reached only by a lane change.
    """
    pred_lane = 1 if pred[0] == "road" else None
    succ_lane = 1 if succ[0] == "road" else None
    starts = [0.0, *splits]
    sections: list[tuple[float, str | None, str]] = []
    for k, s in enumerate(starts):
        first, last = k == 0, k == len(starts) - 1
        p = pred_lane if first else 1
        n = succ_lane if last else 1
        right = _lane(-1, p and -1, n and -1, "solid" if k != added_lane_section else "broken")
        if k == added_lane_section:
            right += "\n" + _lane(-2, -1, -1, "solid")
        sections.append((s, _lane(1, p, n, "solid"), right))
    return _road(road_id, -1, start, pieces, _link("predecessor", *pred) + _link("successor", *succ), sections)


def _junction(junction_id: int, spec: dict) -> tuple[list[str], str]:
    """Connecting roads (every arm to every other arm) and the ``<junction>`` record of one T-junction."""
    cx, cy = spec["centre"]
    roads, links, road_id = [], [], spec["first_connecting_id"]
    for (ax, ay), (in_road, in_contact) in spec["arms"].items():
        for (bx, by), (out_road, out_contact) in spec["arms"].items():
            if (ax, ay) == (bx, by):
                continue
            start = (cx + ARM_M * ax, cy + ARM_M * ay, math.atan2(-ay, -ax))
            turn = (-ax) * by - (-ay) * bx  # cross(heading in, heading out): > 0 left turn, < 0 right turn
            pieces = [(2 * ARM_M, 0.0)] if turn == 0 else [(ARM_M * HALF_PI, math.copysign(1 / ARM_M, turn))]
            from_lane = 1 if in_contact == "start" else -1  # the lane driving into the junction
            to_lane = -1 if out_contact == "start" else 1  # the lane driving away from it
            link = _link("predecessor", "road", in_road, in_contact) + _link("successor", "road", out_road, out_contact)
            lanes = [(0.0, None, _lane(-1, from_lane, to_lane, "none"))]
            roads.append(_road(road_id, junction_id, start, pieces, link, lanes))
            links.append(
                f'    <connection id="{len(links)}" incomingRoad="{in_road}" connectingRoad="{road_id}" '
                f'contactPoint="start"><laneLink from="{from_lane}" to="-1"/></connection>'
            )
            road_id += 1
    record = f'  <junction id="{junction_id}" name="junction{junction_id}">\n' + "\n".join(links) + "\n  </junction>"
    return roads, record


#: Lane-section splits of the ``mini_town_sections`` variant: road id -> arc lengths (m) where a section starts.
#: Road 1 gets three sections (one boundary on a straight, one inside a curve), road 2 and road 4 two each; the
#: boundaries fall between the 1, 2 and 3 m samples of a route so a planner cannot rely on round numbers.
SECTION_SPLITS: dict[int, tuple[float, ...]] = {1: (17.3, 61.15), 2: (20.5,), 4: (31.7,)}


def build_xodr(
    splits: dict[int, tuple[float, ...]] | None = None,
    name: str = "mini_town",
    added_lanes: dict[int, int] | None = None,
) -> str:
    """Return the OpenDRIVE text of the mini town.

    :param splits: road id -> arc lengths in metres where that road starts a new lane section (same lanes,
        linked across the boundary); None or empty gives every road one lane section.
    :param name: the map name written in the header.
    :param added_lanes: road id -> index of the lane section that gets an added right lane -2 (see
        ``_two_way_road``); the road needs splits around it.
    """
    splits, added = splits or {}, added_lanes or {}
    quarter, right = R_LOOP * HALF_PI, -1 / R_LOOP
    roads = [
        _two_way_road(
            1,
            (-10, 0, math.pi),
            [(40, 0), (quarter, right), (40, 0), (quarter, right), (50, 0)],
            ("junction", 1000, None),
            ("road", 3, "start"),
            splits.get(1, ()),
            added.get(1),
        ),
        _two_way_road(
            3,
            (0, 80, 0.0),
            [(50, 0), (quarter, right), (40, 0), (quarter, right), (40, 0)],
            ("road", 1, "end"),
            ("junction", 1000, None),
            splits.get(3, ()),
            added.get(3),
        ),
        _two_way_road(
            2,
            (0, -10, -HALF_PI),
            [(40, 0)],
            ("junction", 1000, None),
            ("junction", 2000, None),
            splits.get(2, ()),
            added.get(2),
        ),
        _two_way_road(
            4,
            (10, -60, 0.0),
            [(30, 0), (quarter, right), (20, 0), (quarter, right), (40, 0)],
            ("junction", 2000, None),
            ("road", 5, "start"),
            splits.get(4, ()),
            added.get(4),
        ),
        _two_way_road(
            5,
            (0, -120, math.pi),
            [(40, 0), (quarter, right), (20, 0), (quarter, right), (30, 0)],
            ("road", 4, "end"),
            ("junction", 2000, None),
            splits.get(5, ()),
            added.get(5),
        ),
    ]
    records = []
    for junction_id, spec in JUNCTIONS.items():
        connecting, record = _junction(junction_id, spec)
        roads += connecting
        records.append(record)
    header = (
        '<?xml version="1.0" standalone="yes"?>\n<OpenDRIVE>\n'
        f'  <header revMajor="1" revMinor="4" name="{name}" version="1.00" '
        'north="100" south="-140" east="80" west="-80">\n'
        "    <geoReference><![CDATA[+proj=tmerc +lat_0=0 +lon_0=0]]></geoReference>\n  </header>\n"
    )
    return header + "\n".join(roads) + "\n" + "\n".join(records) + "\n</OpenDRIVE>\n"


if __name__ == "__main__":
    for target, text in (
        (Path(__file__).with_name("mini_town.xodr"), build_xodr()),
        (Path(__file__).with_name("mini_town_sections.xodr"), build_xodr(SECTION_SPLITS, "mini_town_sections")),
    ):
        target.write_text(text)
        print(f"wrote {target}")
