"""Online scoring: entity histories published from the lakehouse (`publish`), kept in an
online store (`store`), turned into the feature table's columns without Spark
(`features`) and scored with a stored torch model (`scorer`) behind HTTP (`server`)."""
