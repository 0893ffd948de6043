from sparkml_ext.session import DELTA_PACKAGE


def test_embedded_session_has_delta(spark, tmp_path):
    path = str(tmp_path / "t")
    spark.range(3).write.format("delta").save(path)
    assert spark.read.format("delta").load(path).count() == 3
    assert spark.conf.get("spark.sql.session.timeZone") == "UTC"
    assert DELTA_PACKAGE in spark.sparkContext.getConf().get("spark.jars.packages")
