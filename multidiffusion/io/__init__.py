"""What comes in from outside: trust levels (:mod:`.trust`) and bounded readers of the files users
hand us (:mod:`.text`)."""
