"""User studies: blind, randomized side-by-side comparisons with consent, votes, results and export.

A study is defined by a JSON or YAML file (see ``assets/studies/``) or in the admin page. This
package holds everything about studies that is not layout:

* ``definition``: :class:`StudyDefinition` and :func:`parse_definition`, the file format, validated
  with clear errors;
* ``assign``: which pair of conditions and which request each trial gets, and the left/right order,
  drawn from seeds that are stored with the trial;
* ``store``: :class:`StudyStore`, the study tables (their own migration set) and every study SQL statement;
* ``flow``: :class:`StudyService`, the participant flow (consent, history, next trial, vote) on top of
  :class:`demo.core.studio.Studio`, and the admin functions (register, results, export);
* ``results`` and ``stats``: export files, pairwise win rates and Bradley–Terry scores;
* ``__main__``: ``python -m demo.study export NAME``, ``results NAME``, ``list``, ``validate FILE``.

Nothing about a participant is stored before consent. Every study table is append-only: a
participant's history choice, trials, interactions, votes and completion are new rows, never updates.
The one exception is withdrawal: once a participant's withdrawal is recorded, the database lets
their rows be deleted, or anonymized in place when the study's consent says votes are kept
(``consent.on_withdraw: keep_anonymized``); nothing else can change them.
"""
