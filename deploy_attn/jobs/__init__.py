"""Jobs: export as steps, build, verify."""


