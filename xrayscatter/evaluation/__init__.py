"""Stage 4: one-vs-all linear SVMs on image features, leave-one-run-out AP, baselines, attribute model.

Modules: ``datasets`` (labelled images grouped by run), ``features`` (SavedModel signatures → cached
feature matrices), ``baselines`` (bag of words, lbpphog), ``svm`` (LinearSVC per attribute, inner
choice of C), ``protocol`` (leave-one-run-out folds, AP conventions), ``export_attributes`` (the SVMs as a
SavedModel), ``report`` (report.md, report.html, metrics.json and figures), ``run`` (``run_evaluation``,
what ``xrayscatter evaluate`` calls).
"""
