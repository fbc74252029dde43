"""Lab of the damping lesson: K-FAC alone, with the damping and reduction ratio traced."""

from __future__ import annotations

import streamlit as st

from course.lessons import Lab
from views.labs.kfac import training


def damping_lab(lab: Lab) -> None:
    st.markdown(
        "K-FAC alone on the digits autoencoder. Try a tiny fixed damping with a fixed learning rate, then switch "
        "on the Levenberg-Marquardt rule and watch λ follow ρ."
    )
    training("dl", with_baselines=False)
