"""Variant Greek letters are the same symbol: `canonical_greek()` rewrites them to their plain form before grading.

Physics answers write the permittivity as \\varepsilon_0 or \\epsilon_0, an angle as \\varphi or \\phi, a density
as \\varrho or \\rho; the graders (`math`, `eed`) would otherwise read two different symbols and score a right
answer 0. Rewritten (LaTeX macros, whole macro names only, so \\varphix or \\phantom are left alone):

    \\varepsilon -> \\epsilon   \\vartheta -> \\theta   \\varphi -> \\phi   \\varrho -> \\rho   \\varpi -> \\pi
    \\varsigma -> \\sigma       \\varkappa -> \\kappa   \\varGamma ... \\varOmega (italic capitals) -> \\Gamma ... \\Omega

and the Unicode variant code points ϵ ϑ ϕ ϱ ϖ ς ϰ to ε θ φ ρ π σ κ. Note that \\varpi becomes \\pi, which the
parsers read as the constant π, exactly as they read a plain \\pi in the reference.
"""

from __future__ import annotations

import re

_CAPITALS = ("Gamma", "Delta", "Theta", "Lambda", "Xi", "Pi", "Sigma", "Upsilon", "Phi", "Psi", "Omega")
VARIANTS: dict[str, str] = {
    "varepsilon": "epsilon", "vartheta": "theta", "varphi": "phi", "varrho": "rho", "varpi": "pi",
    "varsigma": "sigma", "varkappa": "kappa", **{f"var{c}": c for c in _CAPITALS},
}
_MACRO = re.compile(r"\\(" + "|".join(sorted(VARIANTS, key=len, reverse=True)) + r")(?![A-Za-z])")
_UNICODE = str.maketrans({"\u03f5": "\u03b5", "\u03d1": "\u03b8", "\u03d5": "\u03c6", "\u03f1": "\u03c1",
                          "\u03d6": "\u03c0", "\u03c2": "\u03c3", "\u03f0": "\u03ba"})


def canonical_greek(s: str) -> str:
    """`s` with every variant Greek letter (macro or Unicode) replaced by its plain form."""
    if "\\var" in s:
        s = _MACRO.sub(lambda m: "\\" + VARIANTS[m.group(1)], s)
    return s.translate(_UNICODE)
