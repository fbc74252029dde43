"""Lab of the damping lesson: K-FAC alone, with the damping and reduction ratio traced."""

from __future__ import annotations

import streamlit as st

from course.lessons import Lab
from views.labs.kfac import training


def damping_lab(lab: Lab) -> None:
    st.markdown(
        "K-FAC alone on a digits task of your choice. Try a tiny fixed damping with a fixed learning rate, then "
        "switch on the Levenberg-Marquardt rule and watch λ follow ρ; switch off the rejection of steps that raise "
        "the loss and see what the classifier's saturated softmax does to the quadratic model."
    )
    training("dl", with_baselines=False)
