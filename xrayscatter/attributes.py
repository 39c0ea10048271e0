"""The 17 attributes the ResNet is trained on (the paper's Table 2).

The order here is the order of the multi-hot label vector in the TFRecords,
of the model's output and of every report. Never reorder: append.
"""

ATTRIBUTES: tuple[str, ...] = (
    "BCC",
    "Beam Off Image",
    "Circ. Beamstop",
    "Diffuse high-q",
    "Diffuse low-q",
    "FCC",
    "Halo",
    "High background",
    "Higher orders",
    "Linear beamstop",
    "Many rings",
    "Polycrystalline",
    "Ring",
    "Strong scattering",
    "Structure factor",
    "Weak scattering",
    "Wedge beamstop",
)

NUM_ATTRIBUTES = len(ATTRIBUTES)
ATTRIBUTE_INDEX = {name: i for i, name in enumerate(ATTRIBUTES)}


def multi_hot(tags) -> list[int]:
    """Tags (iterable of attribute names) → 0/1 list in ATTRIBUTES order."""
    tags = set(tags)
    unknown = tags - set(ATTRIBUTES)
    if unknown:
        raise ValueError(f"Unknown attribute(s): {sorted(unknown)}. Received: tags={sorted(tags)}")
    return [int(name in tags) for name in ATTRIBUTES]


def slug(name: str) -> str:
    """A name usable as a file name or tensor name: 'Circ. Beamstop' → 'circ_beamstop'."""
    out = "".join(c.lower() if c.isalnum() else "_" for c in name)
    while "__" in out:
        out = out.replace("__", "_")
    return out.strip("_")
