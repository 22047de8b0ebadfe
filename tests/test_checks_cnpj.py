"""The CNPJ validator against the research vectors (§1.3, §1.6) and properties checked with hypothesis."""

from __future__ import annotations

import random

import pytest
from django.utils import translation
from hypothesis import given, settings
from hypothesis import strategies as st

from checks import cnpj
from checks.cnpj import CNPJError

ALPHABET = cnpj.ALPHABET
bases = st.text(alphabet=ALPHABET, min_size=12, max_size=12).filter(lambda base: base != "0" * 12)
numeric_bases = st.text(alphabet=cnpj.DIGITS, min_size=12, max_size=12).filter(lambda base: base != "0" * 12)
PROPERTY = settings(max_examples=200, deadline=None)

# §1.6: valid vectors (V*) and invalid ones (I*) with the error each must give.
VALID = [
    ("12.ABC.345/01DE-35", "12ABC34501DE35"),  # V1 official RFB example
    ("12ABC34501DE35", "12ABC34501DE35"),  # V2
    ("11.222.333/0001-81", "11222333000181"),  # V7
    ("19131243000197", "19131243000197"),  # V8
    ("27865757000102", "27865757000102"),  # V10
    ("00000000000191", "00000000000191"),  # V11 leading zeros
    ("00.000.000/E08G-12", "00000000E08G12"),  # §1.3 (c) first real alphanumeric (branch)
    ("1A2B3C4D567802", "1A2B3C4D567802"),  # §1.3 (d) remainder < 2
    ("11.277.555/0001-00", "11277555000100"),  # §1.3 (d) numeric analogue, both DVs 0
    ("12.aBc.345/01dE-35", "12ABC34501DE35"),  # lowercase accepted, uppercased
    (" 12 ABC 345 01DE 35\n", "12ABC34501DE35"),  # whitespace anywhere
    ("12.ABC.345/01DE-35\u00a0", "12ABC34501DE35"),  # a pasted non-breaking space
    ("AAAAAAAAAAAA45", "AAAAAAAAAAAA45"),  # §1.4 checksum-valid, no ad-hoc blacklist
    ("ZZZZZZZZZZZZ62", "ZZZZZZZZZZZZ62"),
    ("G2ABC34501DE35", "G2ABC34501DE35"),  # §1.4 mod-11 blind spot: as valid as 12ABC…
    ("94580730000152", "94580730000152"),  # checksum-valid, not registered (a registry decides)
]
INVALID = [
    ("12ABC34501DE34", CNPJError.CHECKSUM),  # I1 DV2 wrong
    ("11222333000182", CNPJError.CHECKSUM),  # I5
    ("00000000000000", CNPJError.FORMAT),  # I6 all-zero base (its checksum passes)
    ("00.000.000/0000-00", CNPJError.FORMAT),
    ("12ABC34501DÉ35", CNPJError.FORMAT),  # I10 non-ASCII letter (≡ E mod 11)
    ("94884082000216", CNPJError.CHECKSUM),  # I12
    ("12.ABC.345/01DE=35", CNPJError.FORMAT),  # another separator is not dropped silently
    ("12ABC34501DE3", CNPJError.LENGTH),
    ("PB3AW3W000133", CNPJError.LENGTH),  # 13 chars: never left-padded
    ("112223330001810", CNPJError.LENGTH),
    ("", CNPJError.LENGTH),
    ("12ABC34501DEAB", CNPJError.FORMAT),  # letters in the check digits
    ("AB.CDE.FGH/IJKL-MN", CNPJError.FORMAT),
    ("12.ABC.345/01DE–35", CNPJError.FORMAT),  # en dash: not one of the mask characters
    ("１１２２２３３３０００１８１", CNPJError.FORMAT),  # fullwidth digits of V7
    ("12АВС34501DЕ35", CNPJError.FORMAT),  # Cyrillic А, В, С, Е
    ("12ABC34501DE٣٥", CNPJError.FORMAT),  # Arabic-Indic digits
    ("12ABC345O1DE35", CNPJError.CHECKSUM),  # O for 0: a different mod-11 class, caught
    ("12ABC34501DEı5", CNPJError.FORMAT),  # dotless ı, which upper() would turn into an ASCII I
    ("1ſ2ABC34501DE5", CNPJError.FORMAT),  # long s: upper() gives S
]
# Non-ASCII characters that look like (or uppercase/normalize to) characters of a CNPJ.
LOOKALIKES = {
    "0": "０Оο٠۰", "1": "１١۱𝟏", "2": "２٢", "3": "３٣", "5": "５٥", "8": "８٨",
    "A": "ＡАΑａ", "B": "ＢВΒ", "C": "ＣС", "E": "ＥЕΕÉÈ", "H": "НΗ", "I": "ІΙıÍ", "K": "КΚ", "M": "МΜ",
    "O": "ОΟＯ", "P": "РΡ", "S": "ЅſＳ", "T": "ТΤ", "X": "ХΧ", "Y": "ΥҮ",
}


@pytest.mark.parametrize(("raw", "canonical"), VALID)
def test_valid_vectors(raw, canonical):
    result = cnpj.validate(raw)
    assert result.is_valid, result.error
    assert result.cnpj == canonical
    assert cnpj.clean(raw) == canonical
    assert cnpj.is_valid(raw)


@pytest.mark.parametrize(("raw", "error"), INVALID)
def test_invalid_vectors(raw, error):
    result = cnpj.validate(raw)
    assert result.error == error
    assert result.cnpj is None
    assert not cnpj.is_valid(raw)
    with pytest.raises(cnpj.InvalidCNPJ) as caught:
        cnpj.clean(raw)
    assert caught.value.code == error


def test_worked_examples_check_digits():
    """§1.3: the hand-computed examples (a)–(d)."""
    assert cnpj.check_digits("12ABC34501DE") == "35"  # S1 = 459, S2 = 424
    assert cnpj.check_digits("112223330001") == "81"  # S1 = 102, S2 = 120
    assert cnpj.check_digits("00000000E08G") == "12"  # S1 = 175, S2 = 229
    assert cnpj.check_digits("1A2B3C4D5678") == "02"  # S1 = 528 (r = 0), S2 = 614
    assert cnpj.check_digits("112775550001") == "00"


def test_character_values_follow_ascii_minus_48():
    """A=17, B=18, C=19 (IN RFB 2.229 Anexo Único): a letter and a digit 17 apart mod 11 are interchangeable."""
    assert [ord(c) - 48 for c in "ABCZ"] == [17, 18, 19, 42]
    # {6, A, L, W}: 6 ≡ 17 ≡ 28 ≡ 39 (mod 11)
    assert {cnpj.check_digits(f"{c}2ABC34501DE") for c in "6ALW"} == {cnpj.check_digits("62ABC34501DE")}


def test_format_and_kind():
    assert cnpj.format_cnpj("12ABC34501DE35") == "12.ABC.345/01DE-35"
    assert cnpj.format_cnpj("27865757000102") == "27.865.757/0001-02"
    assert cnpj.format_cnpj("123") == "123"  # not 14 characters: unchanged, never padded
    assert cnpj.format_cnpj("12ABC34501DÉ35") == "12ABC34501DÉ35"
    assert cnpj.cnpj_kind("27865757000102") == "numeric"
    assert cnpj.cnpj_kind("00000000E08G12") == "alphanumeric"
    assert cnpj.cnpj_raiz("33683111000280") == "33683111"


def test_matriz_of_a_branch():
    """§1.4: the conventional head office of a branch."""
    assert cnpj.matriz_cnpj("33683111000280") == "33683111000107"
    assert cnpj.matriz_cnpj("62779145000270") == "62779145000190"


def test_messages_are_translatable():
    result = cnpj.validate("12ABC34501DE34")
    with translation.override("en"):
        english = str(result.message)
    assert "check digits" in english
    with translation.override("pt-br"):
        assert str(result.message)  # lazy: resolved in the active language
    assert cnpj.validate("12ABC34501DE35").message == ""


def test_generator_is_seedable():
    assert cnpj.generate(rng=random.Random(7)) == cnpj.generate(rng=random.Random(7))
    assert cnpj.generate(raiz="33683111", ordem="0001") == "33683111000107"
    with pytest.raises(ValueError):
        cnpj.generate(raiz="123")


# Properties


@PROPERTY
@given(st.integers(min_value=0, max_value=2**64), st.booleans())
def test_generated_cnpjs_are_valid(seed, alphanumeric):
    value = cnpj.generate(alphanumeric=alphanumeric, rng=random.Random(seed))
    assert cnpj.validate(value).cnpj == value
    assert cnpj.cnpj_kind(value) == ("alphanumeric" if alphanumeric else "numeric")


@PROPERTY
@given(bases)
def test_any_base_with_its_check_digits_is_valid(base):
    assert cnpj.is_valid(base + cnpj.check_digits(base))


@PROPERTY
@given(bases, st.integers(min_value=12, max_value=13), st.sampled_from(cnpj.DIGITS))
def test_changing_one_check_digit_fails_with_checksum(base, position, digit):
    value = base + cnpj.check_digits(base)
    if value[position] == digit:
        return
    changed = value[:position] + digit + value[position + 1:]
    assert cnpj.validate(changed).error == CNPJError.CHECKSUM


@PROPERTY
@given(bases, st.integers(min_value=12, max_value=13), st.sampled_from(ALPHABET[10:]))
def test_a_letter_in_the_check_digits_fails(base, position, letter):
    value = base + cnpj.check_digits(base)
    changed = value[:position] + letter + value[position + 1:]
    assert cnpj.validate(changed).error == CNPJError.FORMAT


@PROPERTY
@given(bases, st.data())
def test_non_ascii_lookalikes_are_refused(base, data):
    value = base + cnpj.check_digits(base)
    candidates = [i for i, c in enumerate(value) if c in LOOKALIKES]
    if not candidates:
        return
    position = data.draw(st.sampled_from(candidates))
    lookalike = data.draw(st.sampled_from(LOOKALIKES[value[position]]))
    changed = value[:position] + lookalike + value[position + 1:]
    assert cnpj.validate(changed).error == CNPJError.FORMAT
    assert cnpj.validate(cnpj.format_cnpj(value).replace(value[position], lookalike, 1)).error == CNPJError.FORMAT


@PROPERTY
@given(st.text(alphabet=st.characters(min_codepoint=128, exclude_categories=("Zs", "Zl", "Zp", "Cc")),
               min_size=1, max_size=3), bases, st.integers(min_value=0, max_value=14))
def test_any_non_ascii_character_is_refused(extra, base, position):
    value = base + cnpj.check_digits(base)
    if not extra.strip():
        return
    assert cnpj.validate(value[:position] + extra + value[position:]).error == CNPJError.FORMAT


@PROPERTY
@given(bases, st.booleans())
def test_format_and_normalize_round_trip(base, lower):
    value = base + cnpj.check_digits(base)
    formatted = cnpj.format_cnpj(value)
    assert cnpj.normalize(formatted.lower() if lower else formatted) == value
    assert cnpj.format_cnpj(cnpj.normalize(formatted)) == formatted
    assert cnpj.clean(formatted) == value


@PROPERTY
@given(numeric_bases)
def test_numeric_cnpjs_are_unchanged_by_the_alphanumeric_rule(base):
    """Digits keep their value under ord(c) - 48: the classic mod-11 digits."""
    def classic(digits: str) -> str:
        out = ""
        for weights in ((5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2), (6, 5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2)):
            total = sum(int(d) * w for d, w in zip(digits + out, weights, strict=True))
            out += str((11 - total % 11) % 11 % 10)  # python-stdnum's closed form
        return out

    assert cnpj.check_digits(base) == classic(base)
