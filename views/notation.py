"""The Notation page: the symbols every lesson uses, one meaning each (``lessons/notation.md``)."""

from __future__ import annotations

import streamlit as st

from course.lessons import load_notation


def render() -> None:
    st.title("Notation")
    st.markdown(load_notation())
