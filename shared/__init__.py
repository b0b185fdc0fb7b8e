"""What every retl process needs: settings, the database, repositories, services, the queue."""
