"""``python -m sam_nnunet.submission``: the challenge image's entrypoint."""
import sys

from sam_nnunet.submission.run import main

sys.exit(main())
