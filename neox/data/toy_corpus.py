"""The toy corpus: small, deterministic, written here (arXiv-, OpenWebMath- and AlgebraicStack-like
documents in Proof-Pile-2's layout), for the toy pipeline, tests and benchmarks. The program is
neox.cli.make_toy_corpus (tools/make_toy_corpus.py).
"""

import json
import math
import os
import random

import zstandard

COMPONENTS = ("arxiv", "open-web-math", "algebraic-stack")


SPLITS = {"train": 0.90, "validation": 0.05, "test": 0.05}


# Uncompressed bytes per component at --scale 1.0 (~2.2 MB total).
BUDGET = {"arxiv": 800_000, "open-web-math": 750_000, "algebraic-stack": 650_000}


ZSTD_LEVEL = 10


GREEK = ["\\alpha", "\\beta", "\\gamma", "\\delta", "\\lambda", "\\mu", "\\sigma", "\\phi", "\\omega", "\\theta"]


OBJECTS = ["finite groups", "commutative rings", "Banach spaces", "elliptic curves", "graphs",
           "modular forms", "Hilbert spaces", "polynomials", "Markov chains", "lattices"]


ADJ = ["asymptotic", "spectral", "arithmetic", "combinatorial", "geometric", "local", "uniform"]


NOUNS = ["behaviour", "structure", "invariants", "bounds", "rigidity", "growth", "stability"]


SURNAMES = ["Euler", "Gauss", "Noether", "Hilbert", "Riemann", "Cauchy", "Lagrange", "Ramanujan",
            "Kovalevskaya", "Galois", "Abel", "Dirichlet", "Chebyshev", "Weyl"]


USERS = ["mathfan", "user", "calc_student", "primes4ever", "topologist", "lemma_hunter", "ode_guy"]


TAGS = ["algebra", "number-theory", "calculus", "linear-algebra", "combinatorics", "precalculus"]


# Word banks for free prose; lexical variety gives the tokenizer enough distinct words
# to reach its target vocab size.
SUBJECTS = ["the argument", "this estimate", "our method", "the construction", "the previous lemma",
            "a standard compactness argument", "the inequality", "this identity", "the bound",
            "a careful analysis", "the decomposition", "this observation", "the counterexample",
            "the recursion", "a direct computation", "the generating function", "the spectral gap"]


VERBS = ["shows", "implies", "suggests", "guarantees", "yields", "establishes", "clarifies",
         "simplifies", "generalizes", "strengthens", "recovers", "motivates", "explains", "controls"]


ADVERBS = ["immediately", "essentially", "naturally", "precisely", "uniformly", "effectively",
           "surprisingly", "roughly", "explicitly", "directly", "quantitatively", "rigorously"]


CLAIMS = ["that the sequence converges", "that the operator is bounded", "that the series is summable",
          "that every ideal is principal", "that the kernel is trivial", "that the map is surjective",
          "that the graph is connected", "that the polynomial is irreducible", "that the measure is finite",
          "that the group is abelian", "that the eigenvalues are real", "that the matrix is invertible",
          "that the function is continuous", "that the integral is finite", "that the limit exists",
          "that the curve is smooth", "that the ring is Noetherian", "that the chain is ergodic"]


QUALIFIERS = ["in the general case", "under mild assumptions", "for sufficiently large $n$",
              "whenever the degree is odd", "modulo a finite set of exceptions", "up to isomorphism",
              "after passing to a subsequence", "on compact subsets", "with high probability",
              "in characteristic zero", "for almost every $x$", "away from the boundary"]


SYLLABLES = ["ka", "lo", "mi", "ver", "an", "sto", "ri", "bel", "dor", "en", "zu", "tha", "mar",
             "ni", "que", "pol", "sen", "ga", "wy", "tor", "li", "us", "ham", "fe", "ro", "chi"]


def _name(rng, lo=2, hi=3):
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(lo, hi)))


def _sentence(rng):
    return (f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(ADVERBS)} {rng.choice(VERBS)} "
            f"{rng.choice(CLAIMS)} {rng.choice(QUALIFIERS)}.")


def _gcd_steps(a, b):
    steps = []
    while b:
        q, r = divmod(a, b)
        steps.append((a, q, b, r))
        a, b = b, r
    return steps, a


def _primes_below(n):
    return [p for p in range(2, n) if all(p % d for d in range(2, int(p ** 0.5) + 1))]


def _poly_str(coeffs, var="x", mul=""):
    """coeffs[i] is the coefficient of var**i; renders highest power first."""
    terms = []
    for power in range(len(coeffs) - 1, -1, -1):
        c = coeffs[power]
        if c == 0:
            continue
        mag = abs(c)
        if power == 0:
            body = str(mag)
        else:
            head = "" if mag == 1 else f"{mag}{mul}"
            body = head + (var if power == 1 else f"{var}^{power}")
        sign = "-" if c < 0 else "+"
        terms.append((sign, body))
    if not terms:
        return "0"
    first_sign, first = terms[0]
    out = ("-" if first_sign == "-" else "") + first
    for sign, body in terms[1:]:
        out += f" {sign} {body}"
    return out


def _matmul(a, b):
    return [[sum(a[i][k] * b[k][j] for k in range(len(b))) for j in range(len(b[0]))] for i in range(len(a))]


def _det(m):
    return m[0][0] * m[1][1] - m[0][1] * m[1][0]


def _latex_matrix(m):
    return "\\begin{pmatrix} " + " \\\\ ".join(" & ".join(str(v) for v in row) for row in m) + " \\end{pmatrix}"


def _arxiv_theorem(rng, env, label):
    kind = rng.randrange(6)
    if kind == 0:
        n = rng.randint(5, 60)
        stmt = (f"For every integer $n \\geq 1$ we have\n\\begin{{equation}}\\label{{eq:{label}}}\n"
                f"\\sum_{{k=1}}^{{n}} k = \\frac{{n(n+1)}}{{2}}.\n\\end{{equation}}\n"
                f"In particular $\\sum_{{k=1}}^{{{n}}} k = {n * (n + 1) // 2}$.")
        proof = (f"We argue by induction on $n$. For $n = 1$ both sides of \\eqref{{eq:{label}}} equal $1$. "
                 f"Assume the identity holds for $n$. Then $\\sum_{{k=1}}^{{n+1}} k = \\frac{{n(n+1)}}{{2}} + (n+1) "
                 f"= \\frac{{(n+1)(n+2)}}{{2}}$, which completes the induction.")
    elif kind == 1:
        a, p = rng.randint(1, 6), rng.randint(1, 5)
        stmt = (f"Let $a = {a}$ and $p = {p}$. Then\n\\[\n\\int_0^{{{a}}} x^{{{p}}}\\,dx = "
                f"\\frac{{{a}^{{{p + 1}}}}}{{{p + 1}}} = \\frac{{{a ** (p + 1)}}}{{{p + 1}}}.\n\\]")
        proof = (f"An antiderivative of $x^{{{p}}}$ is $\\frac{{x^{{{p + 1}}}}}{{{p + 1}}}$. "
                 f"By the fundamental theorem of calculus the integral equals "
                 f"$\\frac{{{a}^{{{p + 1}}}}}{{{p + 1}}} - 0$.")
    elif kind == 2:
        g = rng.choice(GREEK)
        obj = rng.choice(OBJECTS)
        stmt = (f"Let $X$ be one of the {obj} considered above and let ${g} > 0$. "
                f"For every $\\epsilon > 0$ there exists $\\delta > 0$ such that "
                f"$\\| f(x) - f(y) \\| < \\epsilon$ whenever $\\| x - y \\| < \\delta \\cdot {g}$.")
        proof = (f"Since $f$ is uniformly continuous on $X$, choose $\\delta_0$ for $\\epsilon$ and put "
                 f"$\\delta = \\delta_0 / {g}$. Then $\\| x - y \\| < \\delta \\cdot {g} = \\delta_0$ "
                 f"implies $\\| f(x) - f(y) \\| < \\epsilon$.")
    elif kind == 3:
        n, k = rng.randint(4, 14), rng.randint(1, 3)
        stmt = (f"For $0 \\leq k \\leq n$ we have $\\binom{{n}}{{k}} = \\binom{{n-1}}{{k-1}} + \\binom{{n-1}}{{k}}$. "
                f"For example $\\binom{{{n}}}{{{k}}} = {math.comb(n - 1, k - 1)} + {math.comb(n - 1, k)} "
                f"= {math.comb(n, k)}$.")
        proof = ("Count the $k$-subsets of $\\{1, \\dots, n\\}$ according to whether they contain $n$. "
                 "Those containing $n$ correspond to $(k-1)$-subsets of $\\{1, \\dots, n-1\\}$, "
                 "the others to $k$-subsets of $\\{1, \\dots, n-1\\}$.")
    elif kind == 4:
        a = [[rng.randint(-4, 4) for _ in range(2)] for _ in range(2)]
        b = [[rng.randint(-4, 4) for _ in range(2)] for _ in range(2)]
        stmt = (f"Let $A = {_latex_matrix(a)}$ and $B = {_latex_matrix(b)}$. Then\n\\[\n"
                f"AB = {_latex_matrix(_matmul(a, b))}, \\qquad \\det(AB) = {_det(a)} \\cdot {_det(b)} "
                f"= {_det(_matmul(a, b))}.\n\\]")
        proof = ("The entries of $AB$ are $(AB)_{ij} = \\sum_{k=1}^{2} a_{ik} b_{kj}$, and the determinant "
                 "is multiplicative: $\\det(AB) = \\det(A) \\det(B)$.")
    else:
        r, n = rng.randint(2, 5), rng.randint(3, 8)
        total = sum(r ** i for i in range(n + 1))
        stmt = (f"For $r \\neq 1$ we have $\\sum_{{k=0}}^{{n}} r^k = \\frac{{r^{{n+1}} - 1}}{{r - 1}}$. "
                f"With $r = {r}$ and $n = {n}$ this gives $\\frac{{{r ** (n + 1)} - 1}}{{{r - 1}}} = {total}$.")
        proof = ("Let $S = \\sum_{k=0}^{n} r^k$. Then $rS - S = r^{n+1} - 1$, and dividing by $r - 1$ "
                 "gives the claim.")
    return (f"\\begin{{{env}}}\\label{{{env[:3]}:{label}}}\n{stmt}\n\\end{{{env}}}\n\n"
            f"\\begin{{proof}}\n{proof}\n\\end{{proof}}\n")


def make_arxiv(rng: random.Random, idx: int) -> tuple[str, dict]:
    obj = rng.choice(OBJECTS)
    author = rng.choice(SURNAMES + [_name(rng).capitalize() for _ in range(3)])
    parts = [f"\\title{{On the {rng.choice(ADJ)} {rng.choice(NOUNS)} of {obj}}}\n",
             f"\\author{{A. {author}}}\n\n\\begin{{abstract}}\n"
             f"We study the {rng.choice(ADJ)} {rng.choice(NOUNS)} of {obj}. "
             f"Our main result, Theorem~\\ref{{the:main}}, extends earlier work of {rng.choice(SURNAMES)}.\n"
             "\\end{abstract}\n\n\\section{Introduction}\n\n"
             f"Throughout, ${rng.choice(GREEK)}$ denotes a fixed parameter and $n$ a positive integer. "
             f"Recall that the study of {obj} goes back to {rng.choice(SURNAMES)} "
             f"\\cite{{{author.lower()}{rng.randint(1950, 2023)}}}. "
             + " ".join(_sentence(rng) for _ in range(rng.randint(1, 3))) + "\n"]
    for i in range(rng.randint(2, 5)):
        env = rng.choice(["theorem", "lemma", "proposition", "corollary"])
        label = "main" if i == 0 else f"{env[:3]}{i}"
        if i == 0:
            env = "theorem"
        if i == 1:
            parts.append("\n\\section{Preliminaries}\n\n")
        parts.append("\n" + _arxiv_theorem(rng, env, label))
        if rng.random() < 0.5:
            parts.append("\n" + _sentence(rng) + "\n")
        parts.append(f"\nRemark. The constant in \\eqref{{eq:{label}}} cannot be improved in general.\n"
                     if rng.random() < 0.3 else "")
    meta = {"arxiv_id": f"{rng.randint(18, 23):02d}{rng.randint(1, 12):02d}.{idx:05d}",
            "language": "en", "source": "toy"}
    return "".join(parts), meta


def _owm_problem(rng):
    kind = rng.randrange(6)
    if kind == 0:
        a, b = rng.randint(20, 400), rng.randint(10, 200)
        steps, g = _gcd_steps(max(a, b), min(a, b))
        lines = [f"${x} = {q} \\cdot {y} + {r}$" for x, q, y, r in steps]
        return (f"How do I find $\\gcd({a}, {b})$ by hand?",
                "Use the Euclidean algorithm:\n\n" + "\n".join(lines) +
                f"\n\nThe last nonzero remainder is ${g}$, so $\\gcd({a}, {b}) = {g}$.")
    if kind == 1:
        r1, r2 = rng.randint(-9, 9), rng.randint(-9, 9)
        poly = _poly_str([r1 * r2, -(r1 + r2), 1])
        fac = f"(x {'-' if r1 >= 0 else '+'} {abs(r1)})(x {'-' if r2 >= 0 else '+'} {abs(r2)})"
        return (f"Solve ${poly} = 0$.",
                f"We look for two numbers with product ${r1 * r2}$ and sum ${r1 + r2}$: they are ${r1}$ and ${r2}$. "
                f"So ${poly} = {fac}$ and the solutions are $x = {r1}$ and $x = {r2}$.")
    if kind == 2:
        coeffs = [rng.randint(-9, 9) for _ in range(rng.randint(2, 5))]
        coeffs[-1] = coeffs[-1] or 1
        deriv = [i * c for i, c in enumerate(coeffs)][1:]
        return (f"What is the derivative of $f(x) = {_poly_str(coeffs)}$?",
                f"Differentiate term by term using $\\frac{{d}}{{dx}} x^n = n x^{{n-1}}$:\n\n"
                f"$f'(x) = {_poly_str(deriv)}$.")
    if kind == 3:
        a, x, b = rng.randint(2, 12), rng.randint(-20, 20), rng.randint(1, 50)
        c = a * x + b
        return (f"Solve for $x$: ${a}x + {b} = {c}$.",
                f"Subtract ${b}$ from both sides: ${a}x = {c - b}$. Divide by ${a}$: $x = {x}$.\n\n"
                f"Check: ${a} \\cdot ({x}) + {b} = {c}$. \u2713")
    if kind == 4:
        # mod > base, so mod does not divide base and Fermat applies.
        base, exp, mod = rng.randint(2, 12), rng.randint(3, 30), rng.choice([13, 17, 19, 23, 29])
        e = exp % (mod - 1)
        return (f"What is ${base}^{{{exp}}} \\bmod {mod}$?",
                f"By Fermat's little theorem ${base}^{{{mod - 1}}} \\equiv 1 \\pmod{{{mod}}}$ "
                f"since ${mod} \\nmid {base}$. Since ${exp} = {exp // (mod - 1)} \\cdot {mod - 1} + {e}$, we get "
                f"${base}^{{{exp}}} \\equiv {base}^{{{e}}} \\equiv {pow(base, exp, mod)} \\pmod{{{mod}}}$.")
    r = rng.randint(1, 15)
    return (f"A circle has radius ${r}$. What are its area and circumference?",
            f"The area is $A = \\pi r^2 = {r * r}\\pi \\approx {math.pi * r * r:.2f}$ and the circumference is "
            f"$C = 2\\pi r = {2 * r}\\pi \\approx {2 * math.pi * r:.2f}$.")


def make_owm(rng: random.Random, idx: int) -> tuple[str, dict]:
    tag = rng.choice(TAGS)
    parts = [f"# {tag.replace('-', ' ').title()} questions \u2014 page {rng.randint(1, 40)}\n\n"]
    for _ in range(rng.randint(2, 5)):
        q, a = _owm_problem(rng)
        user, votes = rng.choice([rng.choice(USERS), _name(rng)]) + str(rng.randint(1, 999)), rng.randint(0, 50)
        parts.append(f"## Question\n\n{q}\n\nAsked by {user} \u00b7 {votes} votes\n\n"
                     f"### Answer\n\n{a}\n\n")
        if rng.random() < 0.3:
            parts.append(f"Comment: Thanks, that makes sense! \u2013 {_name(rng)}{rng.randint(1, 999)}\n\n")
        elif rng.random() < 0.3:
            note = _sentence(rng)
            parts.append(f"Comment: Note that {note[0].lower() + note[1:]}\n\n")
    parts.append(f"Tags: {tag}, {rng.choice(TAGS)}\n")
    meta = {"url": f"https://forum.example.org/{tag}/{idx}", "language": "en", "source": "toy"}
    return "".join(parts), meta


def _code_python(rng):
    kind = rng.randrange(4)
    if kind == 0:
        a, b = rng.randint(10, 500), rng.randint(10, 500)
        return "gcd.py", (
            "def gcd(a, b):\n    \"\"\"Greatest common divisor by the Euclidean algorithm.\"\"\"\n"
            "    while b:\n        a, b = b, a % b\n    return a\n\n\n"
            f"assert gcd({a}, {b}) == {math.gcd(a, b)}\n"
            f"print(gcd({a}, {b}))  # {math.gcd(a, b)}\n")
    if kind == 1:
        n = rng.randint(10, 60)
        return "primes.py", (
            "def is_prime(n):\n    if n < 2:\n        return False\n"
            "    d = 2\n    while d * d <= n:\n        if n % d == 0:\n            return False\n"
            "        d += 1\n    return True\n\n\n"
            f"primes = [p for p in range({n}) if is_prime(p)]\n"
            f"# {_primes_below(n)}\nprint(len(primes))  # {len(_primes_below(n))}\n")
    if kind == 2:
        a = [[rng.randint(-5, 5) for _ in range(2)] for _ in range(2)]
        b = [[rng.randint(-5, 5) for _ in range(2)] for _ in range(2)]
        return "matrix.py", (
            "def matmul(a, b):\n"
            "    return [[sum(a[i][k] * b[k][j] for k in range(len(b))) for j in range(len(b[0]))]\n"
            "            for i in range(len(a))]\n\n\n"
            f"A = {a}\nB = {b}\nprint(matmul(A, B))  # {_matmul(a, b)}\n")
    n = rng.randint(5, 25)
    fib = [0, 1]
    while len(fib) <= n:
        fib.append(fib[-1] + fib[-2])
    return "fib.py", (
        "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n\n"
        f"assert fib({n}) == {fib[n]}\n")


def _code_lean(rng):
    a, b = rng.randint(2, 200), rng.randint(2, 200)
    name = rng.choice(["add_comm", "mul_comm", "add_assoc"])
    body = {"add_comm": "a + b = b + a", "mul_comm": "a * b = b * a", "add_assoc": "a + b + c = a + (b + c)"}[name]
    vars_ = "(a b c : Nat)" if "c" in body else "(a b : Nat)"
    return "Basic.lean", (
        "import Mathlib.Tactic\n\nnamespace Toy\n\n"
        f"theorem my_{name}_{rng.randint(1, 99)} {vars_} : {body} := by\n  omega\n\n"
        f"example : Nat.gcd {a} {b} = {math.gcd(a, b)} := by\n  norm_num\n\n"
        f"example : {a} * {b} = {a * b} := by\n  norm_num\n\nend Toy\n")


def _code_isabelle(rng):
    n = rng.randint(2, 30)
    return "Toy.thy", (
        "theory Toy\n  imports Main\nbegin\n\n"
        f"lemma sum_upto_{n}: \"(\\<Sum>i::nat=0..{n}. i) = {n * (n + 1) // 2}\"\n  by simp\n\n"
        "lemma gauss: \"2 * (\\<Sum>i::nat=0..n. i) = n * (n + 1)\"\n"
        "  by (induct n) auto\n\nend\n")


def _code_sage(rng):
    r1, r2 = rng.randint(-6, 6), rng.randint(-6, 6)
    poly = _poly_str([r1 * r2, -(r1 + r2), 1], mul="*")
    factors = " * ".join(sorted(f"(x {'-' if r >= 0 else '+'} {abs(r)})" for r in {r1, r2}))
    if r1 == r2:
        factors = f"(x {'-' if r1 >= 0 else '+'} {abs(r1)})^2"
    return "roots.sage", (
        "R.<x> = PolynomialRing(QQ)\n"
        f"f = {poly}\nf.factor()\n# {factors}\n"
        f"f.roots()\n# {sorted({r1, r2}, reverse=True)}\n")


def make_stack(rng: random.Random, idx: int) -> tuple[str, dict]:
    lang, maker = rng.choice([("python", _code_python), ("python", _code_python), ("lean", _code_lean),
                              ("isabelle", _code_isabelle), ("sage", _code_sage)])
    comment = {"python": "# {}\n", "sage": "# {}\n", "lean": "-- {}\n", "isabelle": "(* {} *)\n"}[lang]
    chunks, fname = [], None
    for _ in range(rng.randint(2, 6)):
        name, code = maker(rng)
        fname = fname or f"{_name(rng)}_{name}"
        # Prose comments, as in real repositories (and more words for the tokenizer).
        chunks.append((comment.format(_sentence(rng)) if rng.random() < 0.5 else "") + code)
    sep = {"python": "\n\n", "sage": "\n"}.get(lang, "\n\n")
    repo = f"{_name(rng)}/{rng.choice(['mathlib-toys', 'numtheory', 'algebra-kit', 'proofs'])}"
    meta = {"lang": lang, "max_stars_repo_name": repo,
            "max_stars_repo_path": f"src/{fname}", "max_stars_count": rng.randint(0, 300), "source": "toy"}
    return sep.join(chunks), meta


MAKERS = {"arxiv": make_arxiv, "open-web-math": make_owm, "algebraic-stack": make_stack}


def generate_split(component: str, split: str, seed: int, budget: int) -> tuple[bytes, int, int]:
    """Return jsonl bytes for one component/split, stopping once `budget` text bytes are reached."""
    # A string seed is hashed with sha512 by `random`, so it is stable across runs and platforms.
    rng = random.Random(f"{seed}/{component}/{split}")
    lines, nbytes, idx = [], 0, 0
    while nbytes < budget:
        text, meta = MAKERS[component](rng, idx)
        meta = {"set_name": component, "split": split, "id": idx, **meta}
        lines.append(json.dumps({"text": text, "meta": meta}, ensure_ascii=False))
        nbytes += len(text.encode("utf-8"))
        idx += 1
    return ("\n".join(lines) + "\n").encode("utf-8"), idx, nbytes


def make_corpus(out: str, seed: int = 1234, scale: float = 1.0,
                verbose: bool = True) -> dict[str, dict[str, tuple[int, int]]]:
    """Write the corpus under `out`; returns {component: {split: (docs, text_bytes)}}."""
    stats: dict[str, dict[str, tuple[int, int]]] = {}
    cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL)  # single-threaded, no checksum/timestamps: deterministic
    for component in COMPONENTS:
        stats[component] = {}
        for split, frac in SPLITS.items():
            data, ndocs, nbytes = generate_split(component, split, seed, int(BUDGET[component] * frac * scale))
            d = os.path.join(out, component, split)
            os.makedirs(d, exist_ok=True)
            path = os.path.join(d, "part-000.jsonl.zst")
            with open(path + ".tmp", "wb") as f:
                f.write(cctx.compress(data))
            os.replace(path + ".tmp", path)
            stats[component][split] = (ndocs, nbytes)
            if verbose:
                print(f"{component:>16s}/{split:<10s} {ndocs:6d} docs {nbytes / 1e6:7.3f} MB text")
    return stats
