import dagster as dg

skills = dg.DynamicPartitionsDefinition(name="skill")  # one partition per folder data/skills/<skill>/
SKILL_CHAIN = "skill_chain"  # the asset group of a skill's chain, from its data to its registered model
