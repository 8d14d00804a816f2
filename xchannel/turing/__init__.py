"""The colorization "Turing test" (Zhang, Isola, Efros, ECCV 2016, Sec. 3.1 and Table 1's AMT column).

A real-vs-fake two-alternative forced choice experiment: each trial shows a real photo and a recoloured
version of it side by side, in random order, for one second; the participant then clicks the one they believe
has fake colours (unlimited time to respond). A session is 10 practice trials with feedback followed by 40 test
trials without; 10% of the test trials pit the ground truth against the Random baseline as an attention check.
Each participant tests one method and completes at most one session. The measured quantity is the *fool rate*:
the fraction of (non-practice, non-attention) test trials on which the participant labelled the real photo as
fake. A method that reproduced the ground truth exactly would score 50% in expectation.

Modules, in the order data flows through them:

* :mod:`~xchannel.turing.pairs` -- the pairs folder format: scanning it safely, and writing it (``make-pairs``),
* :mod:`~xchannel.turing.protocol` -- the paper's session plan and the balanced method assignment,
* :mod:`~xchannel.turing.store` -- the SQLite answer store (one row per answered trial, committed at once),
* :mod:`~xchannel.turing.server` -- the web server (standard library only) and the page in ``static/``,
* :mod:`~xchannel.turing.report` -- fool rates with bootstrap standard errors, beside the paper's numbers.
"""
