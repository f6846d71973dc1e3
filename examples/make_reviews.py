"""Generate examples/reviews.csv: 300 product reviews for demos and tests, deterministically.

Run ``python examples/make_reviews.py``; it writes ``reviews.csv`` and ``sandbox-rules.json``
next to itself. Both are committed, so only rerun it after changing this script.

Each review is assembled from fragments chosen by its star rating (1-2 negative, 3 neutral,
4-5 positive), so the scripted sandbox answers in ``sandbox-rules.json`` agree with the rating
for most rows; a few hand-written hard cases (sarcasm, negation) fool the keyword rules on
purpose. After writing, the script checks that agreement and fails under 90%.

The data carries realistic awkward content on purpose: commas and quotes, a newline inside a
cell, non-ASCII text and emoji, reviews starting with ``=``, ``-``, ``+`` or ``@`` (spreadsheet
formula injection), and one empty review.
"""

from __future__ import annotations

import csv
import json
import random
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "reviews.csv"
RULES = HERE / "sandbox-rules.json"
SEED = 20240718
N_ROWS = 300
DEMO_PROMPT = (
    "Classify the sentiment of this product review as positive, negative or neutral. "
    "Answer with one word.\n\nReview: {review}"
)

# product -> (noun used in the text, then one positive, one negative, one neutral detail)
PRODUCTS: dict[str, tuple[str, str, str, str]] = {
    "Stainless Steel Electric Kettle": (
        "kettle",
        "Boils a full jug in under three minutes.",
        "The lid hinge broke in the first week.",
        "It's louder than I expected when it boils.",
    ),
    "Cast Iron Skillet 10in": (
        "skillet",
        "The sear on a steak is perfect, and it came nicely pre-seasoned.",
        "It arrived with rust spots and a cracked handle.",
        "It's heavy, so two hands are needed.",
    ),
    "Burr Coffee Grinder": (
        "grinder",
        "The grind is even from espresso to French press.",
        "Grounds go everywhere and the burr stopped working after a month.",
        "The grind is fine, the static is annoying.",
    ),
    "Air Fryer 5.8 qt": (
        "air fryer",
        "Chips come out crisp in twelve minutes.",
        "The non-stick coating is peeling after five uses, terrible.",
        "The basket is smaller than it looks.",
    ),
    "Chef's Knife 8-inch": (
        "knife",
        "Razor sharp, and the balance is wonderful.",
        "The edge chipped on a pumpkin, poor quality steel.",
        "It needs sharpening more often than my old one.",
    ),
    "Crème Brûlée Torch": (
        "torch",
        "Caramelises a crème brûlée in seconds.",
        "The igniter is defective, it takes ten clicks to light.",
        "Refilling the butane is fiddly.",
    ),
    "Glass Food Storage Set": (
        "storage set",
        "The lids seal tight and nothing leaks in my bag.",
        "Two lids cracked in the dishwasher.",
        "The lids are a bit stiff to close.",
    ),
    "Wireless Earbuds": (
        "pair of earbuds",
        "Battery lasts all day and pairing was instant.",
        "The left one died within a week and support offered no refund.",
        "They fall out when I run, fine at a desk.",
    ),
    "Noise-Cancelling Headphones": (
        "pair of headphones",
        "The noise cancelling on a plane is amazing.",
        "The headband cracked at the hinge after two months.",
        "Comfortable for an hour, then they press on my ears.",
    ),
    "USB-C Charging Hub": (
        "hub",
        "Runs two monitors and charges my laptop at the same time.",
        "It gets hot and disconnects my drives, useless.",
        "Only one port does fast charging.",
    ),
    "Portable Bluetooth Speaker": (
        "speaker",
        "The sound is crisp and the bass is great for its size.",
        "It stopped charging after the first rain, and it's sold as waterproof.",
        "Loud enough for a small room, not for a garden party.",
    ),
    "Smart Watch Series 3": (
        "watch",
        "Tracks my runs and sleep accurately.",
        "The strap broke and the screen scratches if you look at it.",
        "The app is clunky, the watch itself works.",
    ),
    "1080p Webcam": (
        "webcam",
        "The picture is sharp even in a dim room.",
        "The image is grainy and the mic picks up nothing, not worth it.",
        "The clip is wobbly on a thin monitor.",
    ),
    "Mechanical Keyboard": (
        "keyboard",
        "The switches feel fantastic and typing is a joy.",
        "Three keys stopped working within a month.",
        "It's louder than my colleagues would like.",
    ),
    "Memory Foam Pillow": (
        "pillow",
        "My neck pain is gone after a week.",
        "It smells of chemicals even after airing for a week, awful.",
        "It took a few nights to get used to.",
    ),
    "LED Desk Lamp": (
        "lamp",
        "Five brightness levels and a warm setting for the evening, perfect.",
        "It flickers constantly, I'm returning it.",
        "The base is light, so it tips if you bump it.",
    ),
    "Robot Vacuum": (
        "vacuum",
        "It maps the flat and picks up all the dog hair.",
        "It gets stuck under the sofa every day and the app is useless.",
        "It misses the corners, the rest is clean.",
    ),
    "Blackout Curtains": (
        "curtain set",
        "The bedroom is pitch dark at noon now.",
        "Light comes straight through, they're flimsy.",
        "The colour is a bit darker than the photos.",
    ),
    'Cotton Bath Towels, Set of 4 ("Hotel" line)': (
        "towel set",
        "Soft and thick, like the ones in a hotel.",
        "They shed lint everywhere and went rough after one wash, poor quality.",
        "They take a while to dry on the rail.",
    ),
    "Aroma Diffuser": (
        "diffuser",
        "Quiet, and the whole room smells lovely for hours.",
        "It leaks water onto the shelf, a waste of money.",
        "The light can't be switched off, which I didn't know.",
    ),
    "Yoga Mat": (
        "mat",
        "Good grip even in hot yoga, and it doesn't slide.",
        "It tore at the corner in the second week.",
        "It's thinner than the listing suggests.",
    ),
    "Insulated Water Bottle 32oz": (
        "bottle",
        "Ice is still there after a full day in the car.",
        "The lid leaks in my bag, I regret buying it.",
        "It doesn't fit my car's cup holder.",
    ),
    "Trail Running Shoes": (
        "pair of shoes",
        "Comfortable from the first run, no break-in needed.",
        "The sole came off after 80 km, junk.",
        "They run a little small, so order a size up.",
    ),
    "Camping Tent, 2-Person": (
        "tent",
        "Pitched it alone in ten minutes and it stayed dry all night.",
        'The "waterproof" label is a joke, it leaked on night one.',
        "Two people fit, their bags don't.",
    ),
    "Adjustable Dumbbells": (
        "dumbbell set",
        "Switching weights takes a second, and it saves so much space.",
        "The dial jammed and a plate fell on the floor, don't buy.",
        "The handles are thicker than standard ones.",
    ),
    "Bike Helmet": (
        "helmet",
        "Light, well ventilated, and the fit is excellent.",
        "The buckle cracked on the second ride.",
        "It runs large, the pads help a bit.",
    ),
    "Electric Toothbrush": (
        "toothbrush",
        "My dentist noticed the difference at my last check-up.",
        "The battery died after ten uses, awful.",
        "Replacement heads are expensive.",
    ),
    "Ionic Hair Dryer": (
        "hair dryer",
        "Dries my thick hair in half the time, and it's quiet.",
        "It smells of burning plastic on the high setting, defective.",
        "The cord is shorter than I'd like.",
    ),
    "Vitamin C Serum": (
        "serum",
        "My skin has never looked better.",
        "It gave me a rash, so I'm returning it.",
        "Results are subtle, it takes a few weeks to see anything.",
    ),
    "Beard Trimmer": (
        "trimmer",
        "The guards click on firmly and the trim is even.",
        "Pulls hair instead of cutting it, terrible.",
        "The battery indicator is vague.",
    ),
    "Wooden Building Blocks": (
        "block set",
        "My kids play with them every single day.",
        "The paint chipped within a day, poor quality for a toy.",
        "Some pieces are rough around the edges.",
    ),
    "Board Game: Harbour Lights": (
        "game",
        "Best game night we've had in years, the whole family loved it.",
        "Pieces were missing and the box arrived broken.",
        "The rules take a while to learn.",
    ),
    "Dog Harness": (
        "harness",
        "My dog doesn't pull anymore.",
        "The buckle broke on the second walk.",
        "Sizing is a little off, measure your dog first.",
    ),
    "Cat Scratching Post": (
        "scratching post",
        "The cat ignored everything else we bought, she loves this one.",
        "My cat shredded it in a week and it fell apart.",
        "The cat took a week to get used to it.",
    ),
    "Automatic Pet Feeder": (
        "feeder",
        "Feeds on time every day, even while we were away for a weekend.",
        "The timer is defective, it fed twice at midnight.",
        "Setting the schedule is fiddly.",
    ),
    "Ergonomic Office Chair": (
        "chair",
        "My back pain is gone after a month.",
        "The gas lift failed and it sinks every hour, terrible.",
        "Assembly took about an hour.",
    ),
    "Fountain Pen": (
        "pen",
        "Writes smoothly and feels wonderful in the hand.",
        "It leaks ink everywhere, I want a refund.",
        "It's a bit scratchy on cheap paper.",
    ),
    "Monitor Arm": (
        "monitor arm",
        "Rock solid, and it freed up half my desk.",
        "Two screws were missing and the arm droops, junk.",
        "The cable clips are flimsy, the arm is solid.",
    ),
}

# Sentiment words the rules key on. Positive and negative fragments never use the neutral
# markers, and the neutral fragments always contain one, because the neutral rule goes first.
NEUTRAL_MARKERS = [
    "okay",
    "average",
    "nothing special",
    "does the job",
    "mixed feelings",
    "middle of the road",
    "decent",
    "fine for the price",
    "as expected",
    "so-so",
    "meh",
    "three stars",
    "not bad, not amazing",
    "it's alright",
]
NEGATIVE_WORDS = [
    "broke",
    "broken",
    "refund",
    "disappointed",
    "disappointing",
    "returned",
    "returning",
    "waste of money",
    "stopped working",
    "terrible",
    "awful",
    "flimsy",
    "defective",
    "useless",
    "worst",
    "do not buy",
    "don't buy",
    "junk",
    "cracked",
    "fell apart",
    "not worth",
    "regret",
    "poor quality",
    "would not recommend",
    "wouldn't recommend",
    "one star",
    "feels cheap",
    "😡",
]
POSITIVE_WORDS = [
    "love",
    "loved",
    "excellent",
    "great",
    "perfect",
    "perfectly",
    "amazing",
    "fantastic",
    "highly recommend",
    "recommend it",
    "wonderful",
    "best",
    "exceeded",
    "impressed",
    "five stars",
    "happy with",
    "delighted",
    "😍",
    "👍",
]

OPENERS = {
    "positive": [
        "I love this {noun}.",
        "Excellent {noun}, exactly what I was looking for.",
        "Honestly the best {noun} I've owned.",
        "Five stars, no hesitation.",
        "Really impressed with the quality.",
        "This {noun} exceeded my expectations.",
        "Great value for money.",
        "Absolutely fantastic {noun}!",
        "Wonderful purchase, very happy with it.",
        "So happy with this {noun}.",
        "Perfect for what I needed.",
        "Delighted with this one 😍",
        "Works great, and it looks great too.",
        "Amazing {noun} for the price 👍",
        "Bought two more as gifts, that's how much I love it.",
    ],
    "negative": [
        "Very disappointed with this {noun}.",
        "It broke after two weeks.",
        "Total waste of money.",
        "Stopped working after a month of light use.",
        "Terrible {noun}, I'm returning it.",
        "Arrived cracked and the seller ignored me.",
        "Flimsy and poorly made.",
        "Do not buy this {noun}.",
        "Worst purchase I've made this year.",
        "Mine was defective out of the box.",
        "Not worth half the price.",
        "I regret buying this {noun} 😡",
        "Returned it the same day.",
        "Awful. Just awful.",
        "Feels cheap and it fell apart in days.",
    ],
    "neutral": [
        "It's okay.",
        "Average {noun}, nothing special.",
        "It does the job.",
        "Mixed feelings about this {noun}.",
        "Pretty middle of the road.",
        "Decent {noun}, fine for the price.",
        "Works as expected, no more, no less.",
        "So-so.",
        "Meh. It's a {noun}.",
        "Three stars from me.",
        "Not bad, not amazing.",
        "It's alright, I suppose.",
        "An okay {noun} if you don't expect much.",
        "Decent enough for everyday use.",
    ],
}

# Details that fit any product; free of the other sentiments' words and the neutral markers.
GENERIC = {
    "positive": [
        "Feels solid and well made.",
        "Setup took five minutes and it has worked perfectly since.",
        "Would buy again without thinking.",
        "Easy to clean, easy to use.",
        "It looks great on the shelf too.",
        "Highly recommend it.",
    ],
    "negative": [
        "Customer service never answered my emails.",
        "The instructions were useless and half the parts didn't fit.",
        "I'm still waiting for my refund.",
        "Would not recommend to anyone.",
        "The photos make it look far better than it is.",
    ],
    "neutral": [
        "Some good points, some bad.",
        "Hard to say if it's worth the money yet.",
        "The packaging was excessive.",
    ],
}

# Context sentences with no sentiment words at all.
CONTEXT = [
    "Bought it for my dad's birthday.",
    "Arrived a day early.",
    "I use it most mornings before work.",
    "Ordered the blue one.",
    "This is my second one.",
    "We've had it for about three months now.",
    "Used it mostly on weekends.",
    "Got it on sale last spring.",
    "I compared it with two other brands in the shop first.",
    "My partner uses it more than I do.",
    "Delivery took a week, packaging was plain cardboard.",
    "Bought it for our café, we run it all day.",
    "Tested it for a month before writing this.",
    "It replaced one I'd had for years.",
    "Picked it up in the Zürich store while travelling.",
]

# Hand-written rows, placed at fixed positions: awkward content and a few hard cases.
# (rating, text); the ones marked "hard" fool simple keyword rules on purpose.
SPECIALS: list[tuple[int, str]] = [
    (5, "=)) Love it, works great!"),  # starts with "=": formula injection
    (1, "- arrived broken\n- no refund offered\n- seller never replied"),  # "-" and newlines
    (4, "+1 to everything the other reviews say, excellent build."),  # starts with "+"
    (2, "@seller: the one I got was defective, please contact me."),  # starts with "@"
    (3, ""),  # empty review text
    (5, "Really, really \"good\" - my wife says it's the best thing I've bought all year 😍"),
    (1, "Update:\nIt stopped working after 40 days. Waste of money."),
    (5, "Très bien! Great quality, the whole family uses it. Grüße aus Köln 👍"),
    (4, "I was disappointed by my last brand, but this one is impressive."),  # hard: negative
    (2, "Great, another one that broke in a week."),  # sarcasm, still negative
    (5, "No complaints at all, it never broke once in a year of daily use."),  # hard: negative
    (1, "The description promised the best battery life; it lasts an hour."),  # hard: positive
    (4, "Nothing special to look at, but it's the most reliable thing in my kitchen."),  # hard
    (3, "Great design, poor battery. Evens out, I guess."),  # hard: negative
]
RATING_WEIGHTS = {5: 40, 4: 22, 3: 12, 2: 9, 1: 17}


def sentiment_of(rating: int) -> str:
    """The sentiment a rating implies: 1-2 negative, 3 neutral, 4-5 positive."""
    return "negative" if rating <= 2 else "neutral" if rating == 3 else "positive"


def style(text: str, rng: random.Random) -> str:
    """Small human touches: lower-case starts, dropped full stops, doubled exclamation marks."""
    roll = rng.random()
    if roll < 0.08:
        text = text[0].lower() + text[1:]
    elif roll < 0.14 and text.endswith("."):
        text = text[:-1]
    elif roll < 0.18 and text.endswith("!"):
        text += "!"
    return text


def make_review(rating: int, product: str, rng: random.Random) -> str:
    """One to three sentences whose words match the rating's sentiment."""
    sentiment = sentiment_of(rating)
    noun, *details = PRODUCTS[product]
    own = dict(zip(("positive", "negative", "neutral"), details, strict=True))
    parts = [rng.choice(OPENERS[sentiment]).format(noun=noun)]
    n_more = rng.choices([0, 1, 2], weights=[20, 45, 35])[0]
    extras: list[str] = []
    if n_more >= 1:
        extras.append(own[sentiment] if rng.random() < 0.6 else rng.choice(GENERIC[sentiment]))
    if n_more >= 2:
        extras.append(rng.choice(CONTEXT))
    rng.shuffle(extras)
    parts.extend(extras)
    text = " ".join(parts)
    if rating == 3 and rng.random() < 0.35:
        # a three-star review often weighs a good point against a bad one
        good, bad = own["positive"].rstrip("."), own["negative"]
        text += f" {good}, but {bad[0].lower()}{bad[1:]}"
    return style(text, rng)


def generate() -> list[dict[str, str]]:
    """All rows, deterministic for SEED."""
    rng = random.Random(SEED)
    products = list(PRODUCTS)
    ratings = list(RATING_WEIGHTS)
    weights = list(RATING_WEIGHTS.values())
    special_at = {int(i * N_ROWS / len(SPECIALS)) + 7: s for i, s in enumerate(SPECIALS)}
    rows = []
    for i in range(N_ROWS):
        product = rng.choice(products)
        if i in special_at:
            rating, text = special_at[i]
        else:
            rating = rng.choices(ratings, weights=weights)[0]
            text = make_review(rating, product, rng)
        rows.append(
            {
                "review_id": f"R{i + 1:04d}",
                "product": product,
                "rating_given": str(rating),
                "review": text,
            }
        )
    return rows


def write(rows: list[dict[str, str]], path: Path) -> None:
    """Write the rows as UTF-8 CSV with a header."""
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def phrases_pattern(phrases: list[str]) -> str:
    """A regex matching any of the phrases as whole words; straight or curly apostrophes."""
    assert all(re.fullmatch(r"[\w ,'-]+|[^\w\s]+", p) for p in phrases), "no regex syntax"
    words = [p.replace("'", "['’]") for p in phrases if p[0].isalnum()]
    symbols = [p for p in phrases if not p[0].isalnum()]
    alternatives = [r"\b(?:" + "|".join(words) + r")\b", *symbols]
    return "(?:" + "|".join(alternatives) + ")" if symbols else alternatives[0]


def build_rules() -> list[dict[str, str]]:
    """The sandbox's scripted answers for the demo sentiment prompt, first match wins.

    Each rule only fires on that prompt (its text, then the review), so other prompts fall
    through to the sandbox's default answers. Neutral goes first: a three-star review often
    names a good and a bad point. Negative goes before positive, so "great, it broke" is
    negative. The last rule answers "neutral" for any other review.
    """
    # (?i) inline, so the rules match the same whether or not the loader adds IGNORECASE
    prefix = r"(?i)Classify the sentiment[\s\S]*Review:[\s\S]*"
    return [
        {"pattern": prefix + phrases_pattern(NEUTRAL_MARKERS), "answer": "neutral"},
        {"pattern": prefix + phrases_pattern(NEGATIVE_WORDS), "answer": "negative"},
        {"pattern": prefix + phrases_pattern(POSITIVE_WORDS), "answer": "positive"},
        {"pattern": r"(?i)Classify the sentiment", "answer": "neutral"},
    ]


def sandbox_answer(rules: list[dict[str, str]], message: str) -> str | None:
    """What the sandbox's scripted rules answer: first match wins."""
    for rule in rules:
        if re.search(rule["pattern"], message):
            return rule["answer"]
    return None


def check(rows: list[dict[str, str]], rules_path: Path) -> float:
    """Share of rows where the scripted answer agrees with the rating's sentiment."""
    rules = json.loads(rules_path.read_text(encoding="utf-8"))
    agree = 0
    for row in rows:
        answer = sandbox_answer(rules, DEMO_PROMPT.format(review=row["review"]))
        expected = sentiment_of(int(row["rating_given"]))
        if answer == expected:
            agree += 1
        else:
            print(f"  {row['review_id']} {expected:>8} -> {answer}: {row['review']!r}")
    return agree / len(rows)


def main() -> int:
    """Write reviews.csv and sandbox-rules.json, then check that they agree."""
    rows = generate()
    write(rows, OUT)
    print(f"wrote {len(rows)} rows to {OUT}")
    RULES.write_text(json.dumps(build_rules(), indent=2, ensure_ascii=False) + "\n", "utf-8")
    print(f"wrote {RULES}")
    share = check(rows, RULES)
    print(f"sandbox rules agree with the rating on {share:.1%} of rows")
    return 0 if share >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
