# Partial stubs for playhouse (peewee 4.5.3): peewee ships `peewee-stubs` but none for
# `playhouse`. Only the names farine uses are declared.
