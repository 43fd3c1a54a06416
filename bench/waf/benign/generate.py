#!/usr/bin/env python3
"""Generates the benign corpus for the WAF benchmark (corpus.jsonl).

Every template and word list below was written for SpinForge; nothing is
copied from another corpus. Values are combined deterministically (fixed
seed), so the committed corpus.jsonl is reproducible with

    python3 bench/waf/benign/generate.py > bench/waf/benign/corpus.jsonl

Each line is {"kind": ..., "text": ...}. Kinds: prose-XX (by language),
review, address, product, search, json, code, markdown, url, email, misc.
The aim is input real users send to real forms and APIs: apostrophes,
quotes, ampersands, semicolons, pipes, slashes, SQL-ish English words.
"""

import json
import random
import sys

R = random.Random(20261204)


def pick(xs):
    return R.choice(xs)


FIRST = ["Anna", "Ben", "Chloé", "Dmitri", "Éva", "Fatima", "Giulia", "Hiro", "Ingrid", "Jamal",
         "Kai", "Lucía", "Marek", "Nora", "Oisín", "Priya", "Quentin", "Rosa", "Sven", "Tomás",
         "Umar", "Valérie", "Wen", "Ximena", "Yusuf", "Zoë", "Seán", "Siobhán", "D'Arcy", "Renée"]
LAST = ["O'Brien", "D'Angelo", "McDonald", "Müller", "García", "Nguyen", "Kowalski", "O'Neill",
        "Dubois", "Rossi", "Smith-Jones", "van der Berg", "Ó Súilleabháin", "N'Diaye", "L'Écuyer",
        "De'Ath", "Al-Farsi", "Johansson", "Tanaka", "Petrov", "Silva", "O'Connor", "Fitzgerald"]
CITIES = ["Dublin", "Paris", "Berlin", "Madrid", "Rome", "Amsterdam", "Lisbon", "New York",
          "San Francisco", "Toronto", "Montréal", "Zürich", "Kraków", "São Paulo", "Tokyo",
          "Melbourne", "Cape Town", "Bengaluru", "Reykjavík", "Saint-Étienne", "L'Aquila",
          "Val-d'Or", "Coeur d'Alene", "'s-Hertogenbosch"]
PRODUCTS = ["laptop", "kettle", "backpack", "phone case", "desk lamp", "coffee grinder",
            "running shoes", "headphones", "sofa", "bike helmet", "air fryer", "monitor",
            "keyboard", "winter coat", "tent", "blender", "e-reader", "water bottle"]
ADJ = ["great", "terrible", "decent", "amazing", "so-so", "excellent", "cheap", "overpriced",
       "sturdy", "flimsy", "lovely", "noisy", "quiet", "comfy"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]

EN = [
    "I can't believe it's already {month}!",
    "Don't forget: the meeting's at {h}:{m:02d} in room {n}; bring your laptop & charger.",
    "{first} said \"I'll be there by {h} o'clock\" but she's late again.",
    "It's not that I don't like the {product}, it's that it doesn't fit my desk.",
    "We're out of milk, eggs & bread -- could you grab some on your way home?",
    "My son's teacher says he's doing well in maths; we're so proud!",
    "Who's coming to {first}'s party on {month} {n}? Let me know by Friday.",
    "The shop's closed on Sundays, isn't it? I'd check their website first.",
    "Select the size you'd like, then click \"Add to basket\" and you're done.",
    "Please update my delivery address; I've moved to {city}.",
    "Order #{big} hasn't arrived yet. It's been {n} days -- what's going on?",
    "I'd rather drop by in the morning or after 6pm, whichever suits you.",
    "Thanks for the quick reply! That's exactly what I needed :)",
    "You've been charged twice for the same order (ref {big}); please refund one.",
    "Can't log in -- it says 'invalid password' even though I reset it.",
    "The union meeting is on {month} {n}; all members are welcome.",
    "Where's the nearest station? We're staying near {city}'s old town.",
    "Is it OK if I bring my dog? He's friendly & house-trained.",
    "I've read the terms and I don't agree with section {n}; who do I talk to?",
    "Hi {first}, hope you're well! Just checking in re: last week's invoice.",
    "Our team's goal for Q{q}: ship the new {product} and cut support tickets by {n}%.",
    "\"Where do we go from here?\" she asked, and nobody had an answer.",
    "Rock 'n' roll isn't dead, it's just resting.",
    "She's from {city} -- or was it {city2}? I can't remember.",
    "Don't delete the old files yet; we'll need them for the audit.",
    "If you've got a minute, could you have a look at {first}'s draft?",
    "He's 6'2\" and wears a size {n} shoe, so the {product} won't fit him.",
    "Create an account, or log in if you've already got one.",
    "Table for {n} at 8? We'll be celebrating {first}'s 30th.",
    "Y'all should've seen the sunset last night -- absolutely stunning.",
]
REVIEW = [
    "{adj} {product}! It's exactly what I'd hoped for. {q}/5 would buy again.",
    "The {product} is {adj}, but delivery took {n} days & the box was damaged.",
    "Honestly? It's {adj}. Not worth ${n}9.99 -- I've seen better for less.",
    "Bought this for my wife's birthday; she says it's the best {product} she's ever had!!!",
    "Pros: light, {adj}, cheap. Cons: the strap's a bit short (I'm 5'10\").",
    "Doesn't work with my old one -- had to buy an adapter :( Otherwise {adj}.",
    "\"{adj}\" is an understatement. Five stars & then some.",
    "Returned it. The {product}'s lid wouldn't close and customer service didn't reply.",
    "It's OK for the price; don't expect miracles. Update: broke after {n} weeks.",
    "My kids (ages {n} & {n2}) love it; we use it every day.",
]
FR = [
    "C'est l'heure d'aller à l'école, dépêche-toi !",
    "J'ai acheté un {product} à {city}, qu'en pensez-vous ?",
    "Il m'a dit « je t'appelle demain » mais il ne l'a jamais fait.",
    "Aujourd'hui, c'est l'anniversaire de {first} ; on se retrouve à {h} h ?",
    "L'hôtel était très bien, mais l'accueil n'était pas à la hauteur.",
    "Qu'est-ce qu'on fait ce week-end ? J'hésite entre la plage et la montagne.",
    "N'oubliez pas d'apporter vos papiers d'identité et l'attestation d'assurance.",
    "Je n'ai pas reçu ma commande n° {big} ; pourriez-vous vérifier ?",
    "C'était « génial » – enfin, c'est ce qu'elle m'a dit.",
    "S'il vous plaît, mettez à jour mon adresse : j'ai déménagé à {city}.",
]
DE = [
    "Das ist „super“ – ich hätt's nicht gedacht!",
    "Könnten Sie mir bitte die Rechnung Nr. {big} noch einmal schicken?",
    "Wir treffen uns um {h} Uhr am Bahnhof; bring' bitte Regenschirme mit.",
    "Geht's dir gut? Ich hab' gehört, du warst krank.",
    "Der {product} ist leider defekt angekommen, was nun?",
    "Die Straße ist wegen Bauarbeiten gesperrt – Umleitung über die Hauptstraße.",
    "„Wer nicht wagt, der nicht gewinnt“, sagte meine Oma immer.",
    "Ich möchte mein Abo kündigen; wie geht das?",
]
ES = [
    "¿Dónde está la estación? ¡No la encuentro!",
    "Me encantó el {product}; llegó en {n} días y funciona de maravilla.",
    "Mi abuela dice «más vale tarde que nunca».",
    "¿Podrían cambiar mi dirección de envío a {city}? Gracias.",
    "No sé si ir el lunes o el martes; ¿qué opinas?",
    "El pedido n.º {big} no ha llegado todavía.",
    "¡Qué día tan bonito! Vamos a la playa a las {h}.",
]
IT = [
    "L'altro giorno sono andato all'ufficio postale, ma era chiuso.",
    "Com'è andata la riunione? Dov'è il verbale?",
    "Vorrei un'informazione sull'ordine n. {big}, per favore.",
    "Quest'anno andiamo in vacanza a {city}, c'è qualcuno che ci è già stato?",
    "È un po' caro, però la qualità c'è.",
    "Dell'albergo non mi è piaciuto l'odore di fumo nell'atrio.",
]
NL = [
    "'s Avonds gaan we naar 't strand, ga je mee?",
    "Ik heb m'n sleutels weer eens kwijt; heb jij ze gezien?",
    "De {product} is kapot aangekomen, wat nu?",
    "Zo'n mooie dag! We gaan fietsen langs de Amstel.",
]
PT = [
    "Não sei se vou conseguir chegar às {h}h; o trânsito está péssimo.",
    "Gostei muito do {product}, mas a entrega demorou {n} dias.",
    "Ela disse: «vou já», e não voltou.",
    "Qual é o prazo de devolução? O produto veio com defeito.",
]
OTHER = [
    "Это «лучший» магазин в {city}, честно!",
    "Спасибо, заказ №{big} получил; всё в порядке.",
    "「こんにちは」と言ってから、彼は帰りました。",
    "明日の会議は{h}時からです。よろしくお願いします。",
    "这家店的咖啡很好喝，但是价格有点贵。",
    "Γεια σου! Τι κάνεις; Θα τα πούμε αύριο.",
    "Dziękuję za szybką odpowiedź! Zamówienie nr {big} dotarło.",
    "Merhaba, siparişim hâlâ gelmedi; ne zaman gelir?",
    "שלום, אפשר לשנות את כתובת המשלוח?",
    "مرحبا، هل يمكنني تغيير عنوان الشحن؟",
]


def fill(t):
    return t.format(
        month=pick(MONTHS), h=R.randint(1, 12), m=R.choice([0, 15, 30, 45]),
        n=R.randint(2, 30), n2=R.randint(2, 12), big=R.randint(10000, 9999999),
        first=pick(FIRST), city=pick(CITIES), city2=pick(CITIES), product=pick(PRODUCTS),
        adj=pick(ADJ), q=R.randint(1, 4))


STREETS = ["Main St.", "O'Connell Street", "Rue de l'Église", "Hauptstraße", "Calle Mayor",
           "Via dell'Amore", "Prinsengracht", "King's Road", "St. Mary's Lane", "Avenue des Champs-Élysées",
           "Baker Street", "Elm Ave", "Church Rd", "5th Avenue", "Rua Augusta", "Lindenallee"]
ADDRESS = [
    "{n} {street}, Apt. #{m}, {city} {zip}",
    "Flat {m}/{n2}, {n} {street}, {city}",
    "c/o {first} {last}, {n} {street}, {city}",
    "P.O. Box {big}, {city}, {zip}",
    "{street} {n}, 2. OG links, {zip} {city}",
    "{first} {last}\n{n} {street}\n{city} {zip}",
    "Unit {n}-{m}, {street} (rear entrance), {city}",
    "{n}½ {street}; ring bell #{m}",
    "Building \"{letter}\", floor {n2}, {street} {n}, {city}",
    "{street} {n} bis, {zip} {city} -- leave with neighbour if out",
]

BRANDS = ["Apple", "Samsung", "Levi's", "Ben & Jerry's", "AT&T", "Marks & Spencer", "Dr. Martens",
          "L'Oréal", "Johnson & Johnson", "Procter & Gamble", "3M", "H&M", "Häagen-Dazs", "Toys\"R\"Us",
          "Macy's", "Kellogg's", "McDonald's", "Lindt & Sprüngli", "Barnes & Noble", "Dolce & Gabbana"]
PRODUCT = [
    "{brand} {product} (256 GB) – {color}",
    "{brand}® {product} {n}\" x {m}\" | Pack of {n2}",
    "{brand} {product}, {n}% off -- was ${big}.99",
    "{product} 3/4\" × 10' ({brand})",
    "{brand} {product} v{n}.{m} [refurbished]",
    "USB-C → HDMI adapter 4K@60Hz ({brand})",
    "{brand} Men's {product}, Size: {n}/{m}",
    "C++ Primer ({n}th Ed.) & Effective Modern C++",
    "{brand} {product} — 100% cotton; machine-washable @ 30°C",
    "{brand}™ {product} #{n} \"Limited Edition\"",
    "{n} × {product} + free {product2} (while stocks last!)",
    "{product} <{n}kg> heavy-duty",
]
COLORS = ["Blue Titanium", "Black/Red", "Rosé", "Grey (Space)", "Off-white", "Navy & Gold"]

SEARCH = [
    "how to fix 'permission denied' on {os}",
    "best {product} under ${n}0",
    "{product} vs {product2} which is better",
    "select all shortcut {os}",
    "union station {city} parking",
    "drop shipping business ideas {year}",
    "where is the delete key on a mac",
    "what does 1=1 mean in logic",
    "c# vs java for beginners",
    "{first} {last} {city}",
    "restaurants near me open now",
    "\"{product}\" review",
    "{product} -refurbished -used",
    "is it safe to update {os} now?",
    "weather {city} tomorrow",
    "order by date excel",
    "how to exec a script on startup",
    "cat food & dog food delivery",
    "rock & roll hall of fame tickets",
    "python sort list of dicts by key",
    "javascript: the good parts pdf",
    "script for wedding speech funny",
    "alert when price drops {product}",
    "and or not boolean search examples",
    "{n} + {n2} = ?",
    "convert {n} °F to °C",
    "what's the time in {city}",
    "why won't my {product} turn on",
    "who wrote 'the old man and the sea'",
    "1/2 cup to grams",
]
OSES = ["Windows 11", "macOS", "Ubuntu 24.04", "Android", "iOS 18", "Debian"]

CODE = [
    "TypeError: Cannot read properties of undefined (reading 'map')",
    "let v = vec![1, 2, 3]; let total: i32 = v.iter().sum();",
    "if (a && b) {{ return c || d; }}",
    "for i in range({n}): print(f\"item {{i}}\")",
    "git commit -m \"fix: don't crash on empty input\"",
    "npm install --save-dev eslint@{n}",
    "const x = arr.filter(x => x > {n}).map(x => x * 2);",
    "error[E0382]: borrow of moved value: `{var}`",
    "Traceback (most recent call last):\n  File \"app.py\", line {n}, in <module>\n    main()\nKeyError: '{var}'",
    "docker run -p 8080:80 -v $PWD:/app my-image:{n}",
    "assertEquals(\"{var}\", result.getName());",
    "fn main() {{ println!(\"Hello, {{}}!\", \"{first}\"); }}",
    "def greet(name: str) -> str:\n    return f\"Hi, {{name}}!\"",
    "WARN [{var}] retrying in {n}s (attempt {n2}/5)",
    "x = {{'a': 1, 'b': [1, 2, 3]}}",
    "Array.from(document.querySelectorAll('.item')).length",
    "cargo build --release && ./target/release/{var}",
    "std::vector<int> v{{1, 2, 3}};",
    "#include <stdio.h>",
    "public static void main(String[] args) {{ }}",
    "SELECT id, name FROM users WHERE active = 1 ORDER BY name;",
    "The query `UPDATE orders SET status = 'shipped' WHERE id = {n}` takes {n2}s",
    "grep -rn \"TODO\" src/ | wc -l",
    "curl -s https://api.example.com/v1/items | jq '.[0]'",
    "pip install 'requests>=2.{n}'",
    "kubectl get pods -n {var} -o wide",
    "ssh-keygen -t ed25519 -C \"{first}@example.com\"",
    "while read -r line; do echo \"$line\"; done < input.txt",
    "$ python3 -m venv .venv && source .venv/bin/activate",
    "Error: ENOENT: no such file or directory, open './config.json'",
    "<div class=\"card\">{first}</div>",
    "html = `<p>${{user.name}}</p>`;",
    "a = b ? c : d; // ternary",
    "df.groupby('{var}').agg({{'price': 'mean'}})",
    "time.sleep({n})  # wait for the server",
]
VARS = ["user_id", "config", "buf", "items", "ctx", "payload", "token_count", "db", "cache"]

MD = [
    "## Steps to reproduce\n1. Open the app\n2. Click **Save**\n3. See error\n\n> It's broken since v{n}.{m}",
    "- [ ] add tests\n- [x] update docs\n- [ ] ask {first} to review",
    "![screenshot](https://images.example.com/{big}.png)",
    "| Name | Qty | Price |\n|------|----:|------:|\n| {product} | {n} | ${n2}.99 |",
    "**Note:** this doesn't work on {os} -- see #{big} for details.",
    "I'd suggest using `Option<T>` here instead of a sentinel value.",
    "See [the docs](https://docs.example.com/guide#install) or ask in #help.",
    "> \"{first} wrote: it's fine\"\n\nIt isn't, though :)",
    "*Edit:* fixed the typo in `README.md`, thanks @{var}!",
    "```\nmake && make install\n```",
    "1. Preheat oven to 180°C\n2. Mix 1/2 cup sugar & 2 tbsp butter\n3. Bake {n} min",
    "### What's new in {n}.{m}\n* faster startup\n* fixed crash when path contains spaces",
    "Closing as duplicate of #{big}; please reopen if that's wrong.",
    "LGTM 👍 -- one nit: rename `{var}` to something clearer.",
    "_Update {month} {n}_: the fix is out in the nightly build.",
]

URLS = [
    "https://www.example.com/{path}?utm_source=newsletter&utm_medium=email#section-{n}",
    "https://shop.example.co.uk/search?q={word}&sort=price_asc&page={n}",
    "http://localhost:{port}/api/v{n}/{path}",
    "https://maps.example.com/?ll={lat},{lon}&z={n}",
    "https://example.org/wiki/{Word}_(disambiguation)",
    "https://cdn.example.net/img/{big}.jpg?w=640&h=480&fit=crop",
    "https://example.com/{path}/{big}/edit?tab=settings&ref=nav",
    "mailto:{email}?subject=Hello%20there",
    "https://docs.example.io/en/latest/{path}.html#{word}-options",
    "ftp://files.example.edu/pub/{path}.tar.gz",
    "https://example.com/callback?code={hex}&state={hex2}",
    "https://www.example.de/suche?begriff={word}&kategorie=alle",
    "/{path}?filter[price][min]={n}&filter[price][max]={n2}00",
    "https://example.com/a/b/../c/index.html",
]
WORDS = ["shoes", "red+dress", "café", "garden-tools", "o'reilly", "c%2B%2B", "ben%26jerrys", "union",
         "select", "drop", "table", "order", "where", "script", "alert", "cat"]
PATHS = ["blog/2024/05/hello-world", "products/shoes", "account/settings", "docs/getting-started",
         "users/42/profile", "news/world", "cart", "help/faq", "search", "category/home-garden"]

EMAILS = [
    "{f}.{l}@example.com", "{f}{n}@mail.example.org", "{l}+{tag}@example.co.uk",
    "\"{first} {last}\" <{f}.{l}@example.net>", "{f}_{l}@sub.example.ie", "{f}.o'brien@example.ie",
    "{f}-{l}@example-mail.de", "{f}@{l}.example", "info+{tag}@example.shop",
]

MISC = [
    "+1 (555) {n}{n2}-{big4}", "+44 20 7946 0{n}{n2}", "{n}/{n2}/{year}", "{year}-0{m}-{n}",
    "${big}.99 – {n}% off!", "€{n},{n2}0 inkl. MwSt.", "#throwbackthursday #{word}", ":-) ;-) <3 :P",
    "2 < 3 and 5 > 4", "a < b > c", "{n} >= {n2}", "50% off -- today only!!!", "Q&A", "R&D; M&A",
    "AT&T / T-Mobile / Verizon", "Mon–Fri 9:00–17:30; Sat 10–14", "{first} & {first2}",
    "{first} {last}", "Dr. {first} {last}, PhD", "{last}, {first} (Mrs.)", "A-LAST-MINUTE",
    "Size: M/L; Colour: navy", "ISBN 978-{n}-{big4}-{n2}-{m}", "★★★★☆ ({n} reviews)",
]


def gen(kind, templates, count, fmt):
    out, seen, tries = [], set(), 0
    while len(out) < count and tries < count * 50:
        tries += 1
        text = fmt(pick(templates))
        if text not in seen:
            seen.add(text)
            out.append({"kind": kind, "text": text})
    return out


def fmt_address(t):
    return t.format(n=R.randint(1, 250), m=R.randint(1, 40), n2=R.randint(1, 9),
                    street=pick(STREETS), city=pick(CITIES), zip=R.randint(10000, 99999),
                    big=R.randint(100, 99999), first=pick(FIRST), last=pick(LAST),
                    letter=pick("ABCDEFG"))


def fmt_product(t):
    return t.format(brand=pick(BRANDS), product=pick(PRODUCTS), product2=pick(PRODUCTS),
                    color=pick(COLORS), n=R.randint(2, 64), m=R.randint(1, 12),
                    n2=R.randint(2, 24), big=R.randint(9, 2999))


def fmt_search(t):
    return t.format(os=pick(OSES), product=pick(PRODUCTS), product2=pick(PRODUCTS),
                    n=R.randint(2, 99), n2=R.randint(2, 99), city=pick(CITIES),
                    year=R.randint(2019, 2026), first=pick(FIRST), last=pick(LAST))


def fmt_code(t):
    return t.format(n=R.randint(1, 99), n2=R.randint(1, 9), var=pick(VARS), first=pick(FIRST))


def fmt_md(t):
    return t.format(n=R.randint(1, 20), m=R.randint(0, 9), n2=R.randint(2, 99), first=pick(FIRST),
                    product=pick(PRODUCTS), os=pick(OSES), big=R.randint(100, 9999),
                    var=pick(VARS), month=pick(MONTHS))


def fmt_url(t):
    w = pick(WORDS)
    return t.format(path=pick(PATHS), n=R.randint(1, 30), n2=R.randint(1, 30),
                    word=w, Word=w.capitalize(), port=R.choice([3000, 8080, 5173, 8000]),
                    lat=round(R.uniform(-60, 60), 4), lon=round(R.uniform(-150, 150), 4),
                    big=R.randint(1000, 999999), hex="%x" % R.getrandbits(64),
                    hex2="%x" % R.getrandbits(48), email=fmt_email(pick(EMAILS[:3])))


def fmt_email(t):
    f, l = pick(FIRST), pick(LAST)
    ascii_ = lambda s: "".join(c for c in s.lower() if c.isascii() and (c.isalnum() or c == "-"))
    return t.format(f=ascii_(f) or "x", l=ascii_(l) or "y", first=f, last=l,
                    n=R.randint(1, 999), tag=pick(["news", "shop", "work", "2024"]))


def fmt_misc(t):
    return t.format(n=R.randint(1, 9), n2=R.randint(0, 9), m=R.randint(1, 9),
                    big=R.randint(10, 9999), big4=R.randint(1000, 9999), year=R.randint(2019, 2026),
                    word=pick(["tbt", "nofilter", "love", "food", "travel"]), first=pick(FIRST),
                    first2=pick(FIRST), last=pick(LAST))


def json_payloads(count):
    out, seen = [], set()
    while len(out) < count:
        kind = R.randint(0, 5)
        first, last, city = pick(FIRST), pick(LAST), pick(CITIES)
        if kind == 0:
            doc = {"user": {"name": f"{first} {last}", "email": fmt_email(pick(EMAILS[:3])),
                            "city": city}, "newsletter": R.random() < 0.5}
        elif kind == 1:
            doc = {"items": [{"sku": f"SKU-{R.randint(1000, 9999)}", "qty": R.randint(1, 5),
                              "name": fmt_product(pick(PRODUCT))} for _ in range(R.randint(1, 4))],
                   "note": fill(pick(EN)), "coupon": None}
        elif kind == 2:
            doc = {"comment": {"body": fill(pick(EN + REVIEW + FR + DE + ES)),
                               "rating": R.randint(1, 5), "author": first}}
        elif kind == 3:
            doc = {"query": fmt_search(pick(SEARCH)), "filters": {"price": [R.randint(1, 50), R.randint(51, 500)],
                   "in_stock": True}, "sort": pick(["price", "-date", "relevance"])}
        elif kind == 4:
            doc = {"event": pick(["click", "view", "purchase"]), "url": fmt_url(pick(URLS)),
                   "ts": 1700000000 + R.randint(0, 10**7), "meta": {"ua": "Mozilla/5.0", "lang": pick(["en-GB", "fr", "de-DE"])}}
        else:
            doc = {"title": fmt_md(pick(MD)).split("\n")[0], "body": fmt_md(pick(MD)),
                   "labels": [pick(["bug", "question", "good first issue", "won't fix"])]}
        text = json.dumps(doc, ensure_ascii=R.random() < 0.3)
        if text not in seen:
            seen.add(text)
            out.append({"kind": "json", "text": text})
    return out


def main():
    corpus = []
    corpus += gen("prose-en", EN, 700, fill)
    corpus += gen("review", REVIEW, 500, fill)
    corpus += gen("prose-fr", FR, 220, fill)
    corpus += gen("prose-de", DE, 200, fill)
    corpus += gen("prose-es", ES, 180, fill)
    corpus += gen("prose-it", IT, 150, fill)
    corpus += gen("prose-nl", NL, 80, fill)
    corpus += gen("prose-pt", PT, 100, fill)
    corpus += gen("prose-other", OTHER, 150, fill)
    corpus += gen("address", ADDRESS, 500, fmt_address)
    corpus += gen("product", PRODUCT, 500, fmt_product)
    corpus += gen("search", SEARCH, 550, fmt_search)
    corpus += json_payloads(450)
    corpus += gen("code", CODE, 400, fmt_code)
    corpus += gen("markdown", MD, 350, fmt_md)
    corpus += gen("url", URLS, 400, fmt_url)
    corpus += gen("email", EMAILS, 300, fmt_email)
    corpus += gen("misc", MISC, 300, fmt_misc)
    for entry in corpus:
        sys.stdout.write(json.dumps(entry, ensure_ascii=False) + "\n")
    sys.stderr.write(f"{len(corpus)} entries\n")


if __name__ == "__main__":
    main()
