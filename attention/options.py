"""The keys StyleKit adds to ComfyUI's ``transformer_options`` (a block's ``extra_options``): each name is
defined here once, with the one module that writes it and the ones that read it."""

DEFAULT_ATTENTION = "stylekit_default_attention"
"""The attention function a bridge block runs when it has no ComfyUI ``optimized_attention``. Written by the
bridge's processors (``bridge/processor.py``, ``bridge/flux.py``); read by :func:`.functional.host_attention`."""

TEACHER_CHUNKS = "stylekit_teacher_chunks"
"""How many cond/uncond chunks of the batch are the stylised sample's; the chunks after them are the teacher's.
Written by the teacher wrapper (:mod:`.teacher`); read by :mod:`.adapter_attention` and :mod:`.joint_teacher`;
removed by ``models/magicstyle.py`` for the references' own pass."""

JOINT_AFTER = "stylekit_joint_after"
"""Output fix-ups a joint-attention call registers for the block's output patch. Written and read by
:mod:`.joint` only (``JointQKV.after``, ``JointOutput``)."""

JOINT_PLAIN = "stylekit_joint_plain"
"""Set on a block's options while :class:`.joint.PlainRowsBlock` runs the block plainly (for its text and
reference rows, on a family whose blocks have no attention output hook): the router stands aside. Written by
``PlainRowsBlock``; read by ``JointRouter``."""

JOINT_ROWS_BY_BLOCK = "stylekit_joint_rows_by_block"
"""Set by :class:`.joint.PlainRowsBlock` on a family without an attention output hook: the text and reference
rows are kept plain by that block, so ``JointQKV.keep_plain`` registers nothing; its value, a dict, is where the
router marks that it changed the block (``"changed"``). Written by ``PlainRowsBlock``; read by ``JointRouter``
and ``JointQKV.keep_plain``."""
